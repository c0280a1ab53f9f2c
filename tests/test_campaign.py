"""Precision, a record's identity (weights included), stale records, rendering from committed records,
the campaign that trains what the book is missing, and the chapters' paths."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cifar_tl.book.build import ROOT, chapters, kernel_environment
from cifar_tl.book.chapter import record_for, recorded_in_both_precisions
from cifar_tl.core.device import cpu_has_native_bf16, resolve_precision
from cifar_tl.core.errors import UserError
from cifar_tl.records import campaign
from cifar_tl.records.campaign import PlannedRun, book_runs, claim, run_campaign, save_to_results
from cifar_tl.records.identity import make_config, stale_reason
from cifar_tl.records.runner import run
from cifar_tl.records.store import committed_records, reference_record
from cifar_tl.training.recipes import RECIPES, SEARCH
import cifar_tl.records.identity as identity_module
import cifar_tl.records.runner as runs_module

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CIFAR_TL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CIFAR_TL_RENDER_ONLY", raising=False)


def _config(data, recipe="linear_probe", backbone="simple_cnn", **overrides):
    options = dict(per_class=5, val_per_class=5, seed=0, profile="smoke", image_size=32, epochs=1)
    options.update(overrides)
    return make_config(recipe, backbone, data=str(data), **options)


# -- precision ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flags, native", [
    ("fpu sse avx2 fma", False),
    ("fpu avx2 avx512f avx512bw", False),  # AVX-512 without its BF16 extension: emulated, slow
    ("fpu avx512f avx512_bf16", True),
    ("fpu amx_tile amx_bf16", True),
])
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path, flags, native):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n")
    assert cpu_has_native_bf16(str(cpuinfo)) is native
    assert cpu_has_native_bf16(str(tmp_path / "missing")) is False


def test_auto_precision_falls_back_to_fp32_without_native_bf16(monkeypatch):
    import cifar_tl.core.device as device_module

    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: False)
    assert resolve_precision("auto", CPU) == "fp32"
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: True)
    assert resolve_precision("auto", CPU) == "bf16"
    assert resolve_precision("fp32", CPU) == "fp32" and resolve_precision("bf16", CPU) == "bf16"
    with pytest.raises(UserError, match="unknown precision 'fp16'"):
        resolve_precision("fp16", CPU)


def test_bf16_and_fp32_smoke_runs_both_complete_and_say_which_ran(tiny_dataset):
    records = {p: run(_config(tiny_dataset, "finetune_naive", precision=p), progress=False) for p in ("bf16", "fp32")}
    for precision, record in records.items():
        assert record["config"]["precision"] == record["timing"]["precision"] == precision
        assert record["identity"]["config"]["precision"] == precision
        assert 0 <= record["metrics"]["test_accuracy"] <= 1
    assert records["bf16"]["name"] != records["fp32"]["name"]  # two records, compared honestly


def test_a_run_in_both_precisions_is_shown_from_its_fp32_record(tiny_dataset, tmp_path, monkeypatch):
    records = {p: run(_config(tiny_dataset, precision=p), progress=False) for p in ("fp32", "bf16")}
    records["bf16"]["created"] = "2999-01-01T00:00:00+00:00"  # the newer one
    for record in records.values():
        results = _committed(tmp_path, record)
    monkeypatch.setenv("CIFAR_TL_RESULTS", str(results))
    assert reference_record(_config(tiny_dataset, precision="bf16"))["name"] == records["fp32"]["name"]
    paired = recorded_in_both_precisions("linear_probe", "simple_cnn", "smoke", [0, 1], data=str(tiny_dataset),
                                         per_class=5, val_per_class=5, image_size=32, epochs=1)
    assert {p: [r["name"] for r in found] for p, found in paired.items()} == \
        {p: [records[p]["name"]] for p in ("fp32", "bf16")}  # subset 1 has neither, so it is left out
    (results / "some-machine" / f"{records['fp32']['name']}.json").unlink()
    assert reference_record(_config(tiny_dataset, precision="fp32"))["name"] == records["bf16"]["name"]


# -- identity: the weights a run loads --------------------------------------------------------------------------


def _save_resnet18(torch_home: Path, seed: int) -> Path:
    import torchvision

    from cifar_tl.models.backbones import torchvision_checkpoint

    torch.manual_seed(seed)
    _, path = torchvision_checkpoint("resnet18")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


def test_other_weights_give_another_record_and_missing_weights_a_clear_error(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("CIFAR_TL_OFFLINE", "1")
    weights = _save_resnet18(tmp_path / "torch", seed=0)
    config = _config(tiny_dataset, backbone="resnet18")
    first = run(config, progress=False)
    assert first["identity"]["weights"] == first["weights"]["sha256"] is not None
    _save_resnet18(tmp_path / "torch", seed=1)  # other weights under the same file name
    second = run(config, progress=False)
    assert second["name"] != first["name"] and second["weights"]["sha256"] != first["weights"]["sha256"]
    weights.unlink()
    with pytest.raises(UserError, match="weights for resnet18 are not on this machine"):
        run(config, progress=False)  # not the earlier record: these weights cannot be had


# -- stale records and rendering from committed records -------------------------------------------------------


def _committed(tmp_path, record) -> Path:
    folder = tmp_path / "results" / "some-machine"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{record['name']}.json").write_text(json.dumps(record))
    return tmp_path / "results"


def test_a_changed_recipe_makes_its_records_stale(tiny_dataset, monkeypatch):
    from dataclasses import replace

    record = run(_config(tiny_dataset), progress=False)
    assert stale_reason(record) is None
    changed = replace(RECIPES["linear_probe"], weight_decay=0.5)
    monkeypatch.setitem(RECIPES, "linear_probe", changed)
    assert "has changed" in stale_reason(record)
    monkeypatch.setattr(identity_module, "RESULT_REVISION", identity_module.RESULT_REVISION + 1)
    assert "result revision" in stale_reason(record)


def test_the_book_renders_from_committed_records_without_training_or_data(tiny_dataset, tmp_path, monkeypatch):
    record = run(_config(tiny_dataset), progress=False)
    monkeypatch.setenv("CIFAR_TL_RESULTS", str(_committed(tmp_path, record)))
    monkeypatch.setenv("CIFAR_TL_RENDER_ONLY", "1")
    monkeypatch.setattr(runs_module, "train", lambda *a, **k: pytest.fail("trained while rendering"))
    elsewhere = _config(tmp_path / "no-data-here")  # the data is not on this machine: the record still serves
    assert record_for(elsewhere, progress=False) == record
    with pytest.raises(UserError, match="no committed full-profile record of linear_probe .*subset 1.*campaign"):
        record_for(_config(tmp_path / "no-data-here", seed=1), progress=False)
    with pytest.raises(UserError, match="needs a trained model"):
        record_for(elsewhere, return_model=True)


def test_recorded_seeds_reads_what_exists_and_trains_nothing(tiny_dataset, tmp_path, monkeypatch):
    """Appendix A2's every-recipe table: the records that exist, however few, and never a run for them.
    Rendering the book reads the committed records only; elsewhere this machine's cache counts too."""
    from cifar_tl.book import chapter
    from cifar_tl.book.cost_views import recipe_costs

    options = dict(per_class=5, val_per_class=5, image_size=32, epochs=1, data=str(tiny_dataset))
    cached = run(_config(tiny_dataset, seed=0), progress=False)
    committed = run(_config(tiny_dataset, recipe="finetune_naive", seed=1), progress=False)
    monkeypatch.setenv("CIFAR_TL_RESULTS", str(_committed(tmp_path, committed)))
    monkeypatch.setattr(runs_module, "train", lambda *a, **k: pytest.fail("trained for a table of what exists"))
    assert chapter.recorded_seeds("linear_probe", "simple_cnn", "smoke", [0, 1], **options) == [cached]
    assert chapter.recorded_seeds("finetune_naive", "simple_cnn", "smoke", [0, 1], **options) == [committed]
    monkeypatch.setenv("CIFAR_TL_RENDER_ONLY", "1")
    assert chapter.recorded_seeds("linear_probe", "simple_cnn", "smoke", [0, 1], **options) == []
    table = recipe_costs({"finetune_naive": [committed]})
    row = table.loc["finetune_naive"]
    assert row["runs"] == 1 and row["fine-tuning epochs"] == 1  # the profile's one epoch, not the recipe's 15
    assert row["training seconds per epoch"] == pytest.approx(committed["timing"]["train_seconds"])
    assert row["threads"] == str(committed["machine"]["torch_threads"])


def test_rendering_refuses_a_stale_record(tiny_dataset, tmp_path, monkeypatch):
    from dataclasses import replace

    record = run(_config(tiny_dataset), progress=False)
    monkeypatch.setenv("CIFAR_TL_RESULTS", str(_committed(tmp_path, record)))
    monkeypatch.setenv("CIFAR_TL_RENDER_ONLY", "1")
    monkeypatch.setitem(RECIPES, "linear_probe", replace(RECIPES["linear_probe"], label_smoothing=0.3))
    with pytest.raises(UserError, match="no committed full-profile record"):
        record_for(_config(tiny_dataset), progress=False)


def test_committed_results_are_whole_and_current():
    """Every record in results/ is a whole full-profile run whose recipe is still today's (else the book
    would present an old recipe's numbers as current): delete stale ones, `cifar-tl campaign` redoes them."""
    found = committed_records()
    assert found, "results/ holds no run records"
    stale = [f"{path.relative_to(ROOT)}: {why}" for path, record in found if (why := stale_reason(record))]
    assert not stale, "stale records in results/:\n" + "\n".join(stale)
    partial = [str(path.relative_to(ROOT)) for path, record in found if not campaign.whole(record)]
    assert not partial, f"records that are not whole full-profile runs: {partial}"
    for path, record in found:
        assert path.stem == record["name"]
        assert "/" not in record["config"]["data"] and "/" not in record["data"]["source"], path  # portable


# -- the campaign ---------------------------------------------------------------------------------------------


def test_the_plan_covers_every_run_a_chapter_shows():
    """Each chapter's run_seeds calls name only recipes the plan gives it records of (the rung table and
    the campaign read the same plan), and every ladder rung names the chapter that runs it."""
    for chapter in chapters():
        cells = json.loads(chapter.path.read_text())["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        shown = set(re.findall(r'run_seeds\("([a-z_]+)"', code))
        if chapter.id not in campaign.RECORD_CHAPTERS:
            continue
        assert shown <= set(campaign.chapter_recipes(chapter.id)), (chapter.id, shown)
    for recipe in RECIPES.values():
        assert recipe.chapter, f"{recipe.name} names no chapter"
        notebook = ROOT / "notebooks" / f"{recipe.chapter}.ipynb"
        named = "SEARCH" if recipe.name in SEARCH else f'\\"{recipe.name}\\"'  # the search's pilots, as one list
        assert notebook.exists() and named in notebook.read_text(), (recipe.name, recipe.chapter)
    assert {r.recipe for r in book_runs()} == set(RECIPES)


def test_claims_keep_two_processes_off_one_run(tmp_path):
    planned = PlannedRun("full", "efficientnet_lite0", 0)
    held = claim(tmp_path, planned)
    assert held is not None and json.loads(held.read_text())["pid"] == os.getpid()
    assert claim(tmp_path, planned) is None  # a live process holds it
    assert claim(tmp_path, PlannedRun("full", "efficientnet_lite0", 1)) is not None  # another run is free
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    held.write_text(json.dumps({**json.loads(held.read_text()), "pid": int(dead.stdout)}))
    assert claim(tmp_path, planned) is not None  # its process died: taken over


def test_the_campaign_trains_what_is_missing_once_and_resumes(tiny_dataset, tmp_path, monkeypatch, capsys):
    results = tmp_path / "results"
    monkeypatch.setenv("CIFAR_TL_RESULTS", str(results))
    planned = [PlannedRun("linear_probe", "simple_cnn", 0), PlannedRun("linear_probe", "simple_cnn", 1)]
    monkeypatch.setattr(campaign, "book_runs", lambda: planned)
    small = dict(per_class=5, val_per_class=5, image_size=32, epochs=2)
    real_make_config = campaign.make_config
    monkeypatch.setattr(campaign, "make_config", lambda *a, **k: real_make_config(*a, **{**k, **small}))
    calls = []
    real_train = runs_module.train
    monkeypatch.setattr(runs_module, "train", lambda *a, **k: calls.append(1) or real_train(*a, **k))

    assert run_campaign(results, data=str(tiny_dataset), max_runs=1, progress=False) == 1
    saved = list(results.rglob("*.json"))
    assert len(saved) == 1 and saved[0].parent.name == campaign.machine_slug()
    err = capsys.readouterr().err
    assert "0 of 2 runs of the book" in err and "; 2 missing:" in err, err  # what was left before the first
    assert "training linear_probe-simple_cnn-s" in err and "1 missing" not in err, err
    assert run_campaign(results, data=str(tiny_dataset), progress=False) == 1  # resumed: only the other one
    assert run_campaign(results, data=str(tiny_dataset), progress=False) == 0
    assert len(calls) == 2 and len(list(results.rglob("*.json"))) == 2
    assert not list(results.rglob("*.claim")) and not list(results.rglob(".tmp-*"))
    record = json.loads(saved[0].read_text())
    assert record["config"]["profile"] == "full" and not record["metrics"]["test_limited"]


def test_only_whole_full_profile_records_go_into_results(tiny_dataset, tmp_path):
    smoke = run(_config(tiny_dataset), progress=False)
    with pytest.raises(UserError, match="not a whole full-profile run"):
        save_to_results(smoke, tmp_path / "results")
    assert not (tmp_path / "results").exists()


def test_campaign_commands_are_one_train_command_per_missing_run(tmp_path, cli_main):
    done = cli_main("campaign", "--commands", "--results", tmp_path, env={"CIFAR_TL_DATA": "cifar10"})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == len(book_runs())  # an empty results folder misses every run
    pattern = rf"cifar-tl train --recipe \w+ --backbone \w+ --seed \d --profile (full|pilot)( --image-size \d+)?( --per-class \d+)?( --eval-sizes [\d,]+)? --results {tmp_path}"
    assert all(re.fullmatch(pattern, line) for line in lines), lines
    assert sum(" --profile pilot" in line for line in lines) == len(campaign._CHAPTER_OTHER_RUNS["12-full-recipe"])


# -- chapters run in notebooks/: paths from the user's folder -------------------------------------------------


def test_relative_paths_are_resolved_against_the_folder_the_command_ran_in(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CIFAR_TL_DATA", "../shared/data/x.tar.gz")
    monkeypatch.setenv("CIFAR_TL_CACHE", "cache")
    env = kernel_environment()
    assert env["CIFAR_TL_DATA"] == str(tmp_path / "../shared/data/x.tar.gz")
    assert env["CIFAR_TL_CACHE"] == str(tmp_path / "cache")
    assert "CIFAR_TL_RENDER_ONLY" not in env
    assert os.environ["CIFAR_TL_DATA"] == "../shared/data/x.tar.gz"  # this process's environment is left alone
    monkeypatch.setenv("CIFAR_TL_DATA", "cifar10")
    monkeypatch.setenv("CIFAR_TL_RENDER_ONLY", "1")
    env = kernel_environment(render_only=True)
    assert env["CIFAR_TL_DATA"] == "cifar10" and env["CIFAR_TL_RENDER_ONLY"] == "1"
    assert "CIFAR_TL_RENDER_ONLY" not in kernel_environment(render_only=False)  # a smoke chapter trains


def test_kernels_side_by_side_share_the_cores_unless_told_otherwise(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert kernel_environment(threads=3)["OMP_NUM_THREADS"] == "3"
    assert "OMP_NUM_THREADS" not in kernel_environment()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert kernel_environment(threads=3)["OMP_NUM_THREADS"] == "1"  # the user's setting is kept


def test_the_readme_states_the_records_numbers():
    """The README's accuracies are the committed records' (mean ± std over the book's subsets), not typed."""
    from cifar_tl.core.stats import accuracies, fmt_mean_std

    shown = campaign.campaign_status().done
    readme = (ROOT / "README.md").read_text()
    stated = re.findall(r"\*\*(\d+\.\d ± \d+\.\d% \(n=\d+\))\*\*", readme)
    expected = [fmt_mean_std(accuracies([r for p, r in shown.items() if p.recipe == name]))
                for name in ("full", "linear_probe")]
    assert stated == expected


def test_appendix_a1_is_planned_from_records_at_native_sizes():
    """A1 renders from records: its probes (100 and every training image per class) and the full recipe on each
    backbone whose weights install offline, at its native size, and the probe whose test images are also
    classified at other sizes; each is one train command a scheduler can run."""
    from cifar_tl.models.backbones import lite_native_size

    assert "a1-backbones" in campaign.RECORD_CHAPTERS
    runs = campaign.chapter_runs("a1-backbones")
    assert {(r.backbone, r.image_size) for r in runs if r.backbone != "simple_cnn"} == {
        ("efficientnet_lite0", None), ("efficientnet_lite1", lite_native_size(1)), ("efficientnet_lite2", lite_native_size(2))}
    assert campaign.A1_POOL_PER_CLASS == 5_000 - 50  # CIFAR-10's training images of a class, less validation
    for backbone in campaign.A1_BACKBONES:
        for recipe, per_class in (("linear_probe", None), ("linear_probe", campaign.A1_POOL_PER_CLASS), ("full", None)):
            assert {r.seed for r in runs if (r.recipe, r.backbone, r.per_class) == (recipe, backbone, per_class)} == {0, 1, 2}
    swept = [r for r in runs if r.eval_sizes]
    assert [(r.recipe, r.backbone, r.seed) for r in swept] == [("linear_probe", "efficientnet_lite0", 0)]
    command = campaign.train_command(swept[0], Path("results"))
    assert command.endswith("--eval-sizes 32,64,128,224 --results results")
    pool = next(r for r in runs if r.per_class)
    assert f"--per-class {campaign.A1_POOL_PER_CLASS}" in campaign.train_command(pool, Path("results"))
