"""Two campaign processes share one results folder (and, as on one host, one cache); one is killed with
SIGKILL in the middle of a run. The other takes over its claim, its half-done run resumes from the last
epoch the dead one finished, and every planned run ends with exactly one whole record."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow

# Patched into the scripts below: after each saved training state, sleep for sys.argv[argument] seconds.
SLOW_SAVES = """
from cifar_tl.core import resume

pause = float(sys.argv[{argument}])
save = resume.StateFile.save

def save_then_pause(self, state):
    save(self, state)
    time.sleep(pause)

resume.StateFile.save = save_then_pause
"""


def _with_slow_saves(script: str, argument: int) -> str:
    return script.replace("{slow_saves}", SLOW_SAVES.replace("{argument}", str(argument)).lstrip("\n"))


# A campaign over three small runs of the tiny dataset; after each saved training state it sleeps for
# argv[3] seconds, so the test can catch it in the middle of a run.
DRIVER = """
import sys, time
from pathlib import Path
from cifar_tl.core import resume
from cifar_tl.records import campaign
from cifar_tl.records.campaign import PlannedRun, run_campaign

campaign.book_runs = lambda: [PlannedRun("finetune_naive", "simple_cnn", seed) for seed in range(3)]
small = dict(per_class=5, val_per_class=5, image_size=32, epochs=4, precision="fp32", device="cpu")
make_config = campaign.make_config
campaign.make_config = lambda *a, **k: make_config(*a, **{**k, **small})
{slow_saves}run = campaign.run_one

def announced(config, **options):
    print("TRAINING", config.seed, flush=True)
    return run(config, **options)

campaign.run_one = announced
run_campaign(Path(sys.argv[1]), data=sys.argv[2], device="cpu", progress=False)
"""


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_a_worker_killed_mid_run_is_taken_over_and_its_run_resumes(tiny_dataset, tmp_path):
    results, cache = tmp_path / "results", tmp_path / "cache"
    env = {**os.environ, "CIFAR_TL_CACHE": str(cache), "CIFAR_TL_RESULTS": str(results)}

    def worker(pause: float) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", _with_slow_saves(DRIVER, 3), str(results), str(tiny_dataset), str(pause)],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    doomed = worker(pause=600)  # stops for good after its first finished epoch
    try:
        _wait_for(lambda: list(cache.glob("runs/*.state/train.pt")), 300, "the first worker's first epoch")
        survivor = worker(pause=1.0)
        _wait_for(lambda: len(list(results.glob("*/.claims/*.claim"))) == 2, 300, "the second worker's claim")
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(30)
        out, err = survivor.communicate(timeout=600)
    finally:
        for process in (doomed, locals().get("survivor")):
            if process is not None and process.poll() is None:
                process.kill()
    assert survivor.returncode == 0, err
    assert doomed.returncode == -signal.SIGKILL
    assert doomed.stdout.read().split() == ["TRAINING", "0"]

    trained = [int(line.split()[1]) for line in out.splitlines() if line.startswith("TRAINING")]
    assert sorted(trained) == [0, 1, 2]  # the survivor trained its own run, the dead one's, and the last: once each
    records = {json.loads(p.read_text())["config"]["seed"]: json.loads(p.read_text()) for p in results.glob("*/*.json")}
    assert sorted(records) == [0, 1, 2]
    assert records[0]["timing"]["resumed_at_epochs"] == [1]  # from the epoch the killed worker had finished
    assert records[1]["timing"]["resumed_at_epochs"] == records[2]["timing"]["resumed_at_epochs"] == []
    assert all(len(r["history"]) == 4 and r["metrics"]["test_images"] == 30 for r in records.values())
    assert not list(results.rglob("*.claim")) and not list(tmp_path.rglob(".tmp-*"))
    assert not list(cache.glob("runs/*.state"))


# One run of the tiny dataset through `runner.run`; each saved training state is followed by argv[2] seconds
# of sleep, and every start of training is announced.
SAME_RUN = """
import sys, time
from cifar_tl.core import resume
from cifar_tl.records import runner
from cifar_tl.records.identity import make_config

{slow_saves}train = runner._train

def announced(*args, **kwargs):
    print("TRAINING", flush=True)
    return train(*args, **kwargs)

runner._train = announced
config = make_config("finetune_naive", "simple_cnn", data=sys.argv[1], per_class=5, val_per_class=5, seed=0,
                     profile="smoke", image_size=32, epochs=4, precision="fp32", device="cpu")
print("CREATED", runner.run(config, progress=False, device="cpu")["created"], flush=True)
"""


def test_two_processes_asking_for_one_run_train_it_once(tiny_dataset, tmp_path):
    """As when two chapters built side by side need the same record: the second waits for the first, then
    reads its record; neither trips over the other's training state."""
    cache = tmp_path / "cache"
    env = {**os.environ, "CIFAR_TL_CACHE": str(cache)}

    def process(pause: float) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", _with_slow_saves(SAME_RUN, 2), str(tiny_dataset), str(pause)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    first = process(pause=3.0)  # long enough for the second to start while the first trains
    try:
        _wait_for(lambda: list(cache.glob("runs/*.state/train.pt")), 300, "the first process's first epoch")
        second = process(pause=0.0)
        second_out, second_err = second.communicate(timeout=300)
        first_out, first_err = first.communicate(timeout=300)
    finally:
        for p in (first, locals().get("second")):
            if p is not None and p.poll() is None:
                p.kill()
    assert first.returncode == 0, first_err
    assert second.returncode == 0, second_err
    assert first_out.split()[0] == "TRAINING" and "TRAINING" not in second_out
    assert "another process is training" in second_err
    created = [line for line in first_out.splitlines() if line.startswith("CREATED")]
    assert created and created == [line for line in second_out.splitlines() if line.startswith("CREATED")]
    assert len(list(cache.glob("runs/*.json"))) == 1 and not list(cache.glob("runs/*.state"))
