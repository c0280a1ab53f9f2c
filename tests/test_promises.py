"""README promises that no other test checks: a record read back from committed results/ instead of trained;
CIFAR_TL_RESULTS=DIR:DIR; `cifar-tl campaign --status` naming what is missing and what is stale; the campaign
trying the cheapest runs (by measured timings) first; Ctrl-C during `cifar-tl run` leaving no executed
notebook half-written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cifar_tl.book.build import ROOT
from cifar_tl.book.chapter import record_for
from cifar_tl.records import campaign
from cifar_tl.records.identity import make_config, stale_reason
from cifar_tl.records.runner import run
from cifar_tl.records.store import committed_records, results_dirs
import cifar_tl.records.runner as runs_module


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CIFAR_TL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CIFAR_TL_RENDER_ONLY", raising=False)
    monkeypatch.delenv("CIFAR_TL_RESULTS", raising=False)


def _forbid_training(monkeypatch):
    monkeypatch.setattr(runs_module, "train", lambda *a, **k: pytest.fail("trained instead of reading the record"))


def _current_committed(recipe: str | None = None) -> list[tuple[Path, dict]]:
    found = [(path, record) for path, record in committed_records()
             if stale_reason(record) is None and (recipe is None or record["config"]["recipe"] == recipe)]
    assert found, f"results/ holds no current record{f' of {recipe}' if recipe else ''}"
    return found


def _small(data, seed=0):
    return make_config("linear_probe", "simple_cnn", per_class=5, val_per_class=5, seed=seed, image_size=32, epochs=1,
                       data=str(data), precision="fp32", device="cpu")


def _commit(record: dict, folder: Path, machine: str = "some-machine") -> Path:
    path = folder / machine / f"{record['name']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    return path


# -- records read back from results/ ----------------------------------------------------------------------------


def test_a_committed_record_in_results_is_read_back_not_trained(jpeg_archive, share_decoded_arrays, tmp_path,
                                                                monkeypatch):
    """A run whose record is committed in the checkout's results/ returns that record, from a cache that holds
    no record (only the session's decoded arrays), without training: the real data, weights and record."""
    share_decoded_arrays(tmp_path / "cache")
    path, committed = next((p, r) for p, r in _current_committed() if r["config"]["backbone"] == "efficientnet_lite0")
    assert results_dirs() == [ROOT / "results"] and path.is_relative_to(ROOT / "results")
    config = committed["config"]
    _forbid_training(monkeypatch)
    again = run(make_config(config["recipe"], config["backbone"], seed=config["seed"], profile="full",
                            data=str(jpeg_archive), precision=config["precision"], device="cpu"),
                progress=False, device="cpu")
    assert again == committed


def test_results_folders_separated_by_the_path_separator_are_all_read(tiny_dataset, tmp_path, monkeypatch):
    """CIFAR_TL_RESULTS=DIR:DIR: the records of every folder are committed records, and a run is read back
    from whichever folder holds it."""
    records = [run(_small(tiny_dataset, seed), progress=False, device="cpu") for seed in (0, 1)]
    first, second = tmp_path / "results-a", tmp_path / "results-b"
    paths = [_commit(records[0], first), _commit(records[1], second, "other-machine")]
    monkeypatch.setenv("CIFAR_TL_RESULTS", os.pathsep.join([str(first), str(second)]))
    monkeypatch.setenv("CIFAR_TL_CACHE", str(tmp_path / "empty-cache"))
    assert results_dirs() == [first, second]
    assert sorted(p for p, _ in committed_records()) == sorted(paths)
    _forbid_training(monkeypatch)
    assert run(_small(tiny_dataset, 1), progress=False, device="cpu") == records[1]  # from the second folder
    assert run(_small(tiny_dataset, 0), progress=False, device="cpu") == records[0]
    monkeypatch.setenv("CIFAR_TL_RENDER_ONLY", "1")  # rendering the book reads both folders too
    assert record_for(_small(tmp_path / "no-data-here", 1), progress=False) == records[1]


# -- the campaign: --status, and the order it trains in ---------------------------------------------------------


def test_campaign_status_lists_what_is_missing_and_what_is_stale(jpeg_archive, tmp_path, cli_main):
    results = tmp_path / "results"
    path, current = _current_committed()[0]
    done_label = f"{current['config']['recipe']}-{current['config']['backbone']}-s{current['config']['seed']}"
    _commit(current, results, path.parent.name)
    stale = {**current, "identity": {**current["identity"], "revision": 0}, "name": current["name"] + "x"}
    stale_path = _commit(stale, results, "old-machine")
    status = cli_main("campaign", "--status", "--results", results, env={"CIFAR_TL_DATA": str(jpeg_archive)})
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    planned = campaign.book_runs()
    assert lines[0].startswith(f"1 of {len(planned)} runs of the book") and f"{len(planned) - 1} missing" in lines[0]
    listed = {line.split()[0] for line in lines[1:] if line.startswith("  ")}
    assert listed == {p.label for p in planned} - {done_label}  # every missing run, and not the committed one
    assert [line for line in lines if line.startswith(f"stale: {stale_path}: made at result revision 0")]


def test_the_campaign_tries_the_cheapest_measured_runs_first(jpeg_archive, tmp_path, monkeypatch, capsys):
    """With the measured seconds of two recipes committed (one subset each), the campaign takes the other
    subsets of the cheaper recipe before those of the dearer one, whatever order the book lists them in."""
    by_recipe = {}
    for path, record in _current_committed():
        by_recipe.setdefault(record["config"]["recipe"], (path, record))
    timed = sorted(by_recipe.values(), key=lambda pr: pr[1]["timing"]["total_seconds"])
    (cheap_path, cheap), (dear_path, dear) = timed[0], timed[-1]
    assert cheap["timing"]["total_seconds"] < dear["timing"]["total_seconds"]
    results = tmp_path / "results"
    for path, record in (cheap_path, cheap), (dear_path, dear):
        _commit(record, results, path.parent.name)
    monkeypatch.setenv("CIFAR_TL_RESULTS", str(results))
    planned = campaign.book_runs()
    monkeypatch.setattr(campaign, "book_runs", lambda: list(reversed(planned)))  # the book's order does not decide
    tried = []
    monkeypatch.setattr(campaign, "claim", lambda folder, candidate: tried.append(candidate))  # all held elsewhere
    monkeypatch.setattr(runs_module, "train", lambda *a, **k: pytest.fail("trained a run it could not claim"))
    assert campaign.run_campaign(results, data=str(jpeg_archive), progress=False) == 0
    assert "claimed by another process" in capsys.readouterr().err
    assert len(tried) == len(planned) - 2
    order = [p.recipe for p in tried if p.recipe in (cheap["config"]["recipe"], dear["config"]["recipe"])]
    assert order == [cheap["config"]["recipe"]] * 2 + [dear["config"]["recipe"]] * 2, order


# -- Ctrl-C during `cifar-tl run` ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_ctrl_c_during_cifar_tl_run_leaves_no_executed_notebook(jpeg_archive, tmp_path):
    """papermill writes the executed notebook as each cell finishes; `cifar-tl run` (and the book build, which
    executes chapters the same way, `build.run_chapter`) writes it to a temporary file renamed into place at
    the end. A Ctrl-C once the partial notebook is on disk leaves no `01-data.ipynb` and no temporary file."""
    out = tmp_path / "executed"
    env = {**os.environ, "CIFAR_TL_DATA": str(jpeg_archive), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "cifar_tl.cli", "run", "01-data", "--profile", "smoke",
                                "--out", str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               start_new_session=True)  # the kernel papermill starts joins this session
    try:
        deadline, first_size = time.monotonic() + 600, None
        while True:  # until the partial executed notebook (by any name) has grown: a cell has run, others are to come
            sizes = [p.stat().st_size for p in out.glob("*") if p.is_file()]
            if sizes and max(sizes) > 0:
                first_size = first_size or max(sizes)
                if max(sizes) > first_size:
                    break
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "papermill never wrote the executed notebook"
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
        try:
            os.killpg(process.pid, signal.SIGKILL)  # whatever of this session is left (a kernel)
        except ProcessLookupError:
            pass
    err = err.decode(errors="replace")
    assert process.returncode == 130, err[-3000:]
    assert "interrupted" in err and "Traceback" not in err, err[-3000:]
    assert sorted(p.name for p in out.iterdir()) == [], "an executed notebook (or a temporary one) was left"
