"""Interrupted and concurrent runs: a real process gets a real SIGINT; nothing corrupt is left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def _start(args, cache: Path) -> subprocess.Popen:
    env = {**os.environ, "CIFAR_TL_CACHE": str(cache), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "cifar_tl.cli", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for(process: subprocess.Popen, path: Path, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"process ended early: {process.communicate()}")
        if path.exists() and any(path.iterdir()):
            return
        time.sleep(0.05)
    raise AssertionError(f"{path} never filled")


def _temporary_files(root: Path) -> list[Path]:
    return [p for p in root.rglob(".tmp-*")]


def _all_cache_files_valid(cache: Path) -> None:
    for record in (cache / "runs").glob("*.json"):
        json.loads(record.read_text())
    for arrays in (cache / "data").glob("*.npz"):
        with np.load(arrays) as z:
            assert len(z["train_labels"]) == len(z["train_images"])


def test_sigint_during_decoding_and_training_leaves_nothing_corrupt(tmp_path, jpeg_archive):
    cache = tmp_path / "cache"
    args = ["train", "--recipe", "finetune_naive", "--backbone", "simple_cnn", "--epochs", "12",
            "--image-size", "32", "--data", str(jpeg_archive), "--per-class", "100", "--val-per-class", "5"]
    # 1. Ctrl-C while the archive is being decoded.
    process = _start(args, cache)
    time.sleep(3)
    assert process.poll() is None
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    assert not _temporary_files(cache)
    # 2. Ctrl-C in the middle of training (the decoded arrays are cached by now).
    process = _start(args, cache)
    _wait_for(process, cache / "data")
    time.sleep(3)
    assert process.poll() is None, "training ended before it could be interrupted"
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert not list((cache / "runs").glob("*.json")), "a record was written by an interrupted run"
    assert not _temporary_files(cache)
    _all_cache_files_valid(cache)
    # 3. The same command succeeds on what was left behind.
    done = subprocess.run([sys.executable, "-m", "cifar_tl.cli", *args, "--json"],
                          env={**os.environ, "CIFAR_TL_CACHE": str(cache)}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["metrics"]["test_images"] == 10000  # the full profile: every test image
    _all_cache_files_valid(cache)
    assert not _temporary_files(cache)


def test_sigterm_is_an_interruption_too(tmp_path, make_class_folders):
    data = make_class_folders(classes=2, per_class=40, test_per_class=4)
    cache = tmp_path / "cache"
    process = _start(["train", "--recipe", "finetune_naive", "--backbone", "simple_cnn", "--epochs", "500",
                      "--per-class", "30", "--val-per-class", "5", "--data", str(data)], cache)
    _wait_for(process, cache / "data")
    time.sleep(2)
    process.terminate()
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and "Traceback" not in err
    assert not _temporary_files(cache)


def test_two_processes_running_the_same_config_share_the_cache(tmp_path, make_class_folders):
    data = make_class_folders(classes=2, per_class=12, test_per_class=4, seed=3)
    cache = tmp_path / "cache"
    args = ["train", "--recipe", "finetune_naive", "--backbone", "simple_cnn", "--epochs", "2",
            "--per-class", "8", "--val-per-class", "2", "--data", str(data), "--json"]
    first, second = _start(args, cache), _start(args, cache)
    results = [p.communicate(timeout=300) for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, results
    records = [json.loads(out) for out, _ in results]
    assert records[0]["metrics"] == records[1]["metrics"]  # deterministic on the CPU
    assert len(list((cache / "runs").glob("*.json"))) == 1
    _all_cache_files_valid(cache)
    assert not _temporary_files(cache)
