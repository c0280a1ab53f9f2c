"""Interrupted and concurrent runs: a real process gets a real SIGINT or SIGTERM at a moment it has been seen
to reach (decoding, training), never after a guessed sleep; nothing corrupt is left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow


class Command:
    """`python -m cifar_tl.cli ARGS` in the background, its stdout and stderr read as they come (tqdm's
    progress bars end in carriage returns, not newlines), so a test can wait for what it prints."""

    def __init__(self, args, cache: Path):
        env = {**os.environ, "CIFAR_TL_CACHE": str(cache), "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen([sys.executable, "-m", "cifar_tl.cli", *args], env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._out, self._err = bytearray(), bytearray()
        self._readers = [threading.Thread(target=self._read, args=(stream, buffer), daemon=True)
                         for stream, buffer in ((self.process.stdout, self._out), (self.process.stderr, self._err))]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream, buffer: bytearray) -> None:
        while chunk := stream.read1(65536):
            buffer.extend(chunk)

    @property
    def stderr(self) -> str:
        return self._err.decode(errors="replace")

    def wait_for(self, text: str, timeout: float = 600) -> None:
        """Until `text` appears on stderr; fails if the process ends first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.stderr:
                return
            if self.process.poll() is not None:
                self.finish()  # what it printed last is read to the end
                if text in self.stderr:
                    return
                raise AssertionError(f"the process ended (status {self.process.returncode}) before printing "
                                     f"{text!r}:\n{self.stderr[-3000:]}")
            time.sleep(0.02)
        self.process.kill()
        raise AssertionError(f"{text!r} never appeared:\n{self.stderr[-3000:]}")

    def finish(self, timeout: float = 120) -> tuple[int, str, str]:
        self.process.wait(timeout)
        for reader in self._readers:
            reader.join(10)
        return self.process.returncode, self._out.decode(), self.stderr


def _temporary_files(root: Path) -> list[Path]:
    return list(root.rglob(".tmp-*"))


def _records(cache: Path) -> list[Path]:
    """Run records in the cache (JSON with metrics), not other state a run may keep there."""
    found = []
    for path in (cache / "runs").glob("*.json"):
        record = json.loads(path.read_text())  # every JSON file there must be whole
        if isinstance(record, dict) and "metrics" in record:
            found.append(path)
    return found


def _all_cache_files_valid(cache: Path) -> None:
    _records(cache)
    for arrays in (cache / "data").glob("*.npz"):
        with np.load(arrays) as z:
            assert len(z["train_labels"]) == len(z["train_images"])


def _interrupted(command: Command, sig=signal.SIGINT) -> str:
    command.process.send_signal(sig)
    code, _, err = command.finish(120)
    assert code == 130, err[-3000:]
    assert "Traceback" not in err and "interrupted" in err, err[-3000:]
    return err


def test_sigint_during_decoding_and_training_leaves_nothing_corrupt(tmp_path, jpeg_archive, share_decoded_arrays):
    cache = tmp_path / "cache"
    args = ["train", "--recipe", "finetune_naive", "--backbone", "simple_cnn", "--epochs", "3",
            "--image-size", "32", "--data", str(jpeg_archive), "--per-class", "100", "--val-per-class", "5"]
    # 1. Ctrl-C while the archive is being decoded: as soon as the decoding bar shows (60,000 images take
    # seconds on any machine), then check that it did land there: no decoded arrays were kept.
    command = Command(args, cache)
    command.wait_for("decoding ")
    _interrupted(command)
    assert not list((cache / "data").glob("*.npz")), "decoded arrays were kept by an interrupted decoding"
    assert not _temporary_files(cache)
    # 2. Ctrl-C in the middle of training, once its first epoch has finished. The decoded arrays come from the
    # session's cache (`cifar_jpeg` decoded them once), not from a second decoding of the 60,000 images.
    share_decoded_arrays(cache)
    command = Command(args, cache)
    command.wait_for("stage 1/1")
    command.wait_for(" 1/3 ")  # tqdm: one epoch of 3 done
    err = _interrupted(command)
    assert "decoding " not in err, "the session's decoded arrays were not used"
    assert not _records(cache), "a record was written by an interrupted run"
    assert not _temporary_files(cache)
    _all_cache_files_valid(cache)
    # 3. The same command succeeds on what was left behind.
    done = subprocess.run([sys.executable, "-m", "cifar_tl.cli", *args, "--json"],
                          env={**os.environ, "CIFAR_TL_CACHE": str(cache)}, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["metrics"]["test_images"] == 10000  # the full profile: every test image
    _all_cache_files_valid(cache)
    assert not _temporary_files(cache)


def test_sigterm_is_an_interruption_too(tmp_path, make_class_folders):
    data = make_class_folders(classes=2, per_class=40, test_per_class=4)
    cache = tmp_path / "cache"
    command = Command(["train", "--recipe", "finetune_naive", "--backbone", "simple_cnn", "--epochs", "500",
                       "--per-class", "30", "--val-per-class", "5", "--data", str(data)], cache)
    command.wait_for("stage 1/1")  # training has started
    _interrupted(command, signal.SIGTERM)
    assert not _records(cache) and not _temporary_files(cache)
    _all_cache_files_valid(cache)


def test_a_second_ctrl_c_while_the_first_is_handled_still_exits_130(tmp_path, make_class_folders):
    """A terminal sends Ctrl-C to the whole process group, and people press it twice: a SIGINT that arrives
    once the first one's message is out must not end the program with a traceback or as killed by SIGINT."""
    data = make_class_folders(classes=2, per_class=40, test_per_class=4)
    cache = tmp_path / "cache"
    command = Command(["train", "--recipe", "finetune_naive", "--backbone", "simple_cnn", "--epochs", "500",
                       "--per-class", "30", "--val-per-class", "5", "--data", str(data)], cache)
    command.wait_for("stage 1/1")
    command.process.send_signal(signal.SIGINT)
    command.wait_for("interrupted")
    command.process.send_signal(signal.SIGINT)  # during the clean-up, or after the exit (then it does nothing)
    code, _, err = command.finish(120)
    assert code == 130, err[-3000:]
    assert "Traceback" not in err and err.count("interrupted") == 1, err[-3000:]
    assert not _records(cache) and not _temporary_files(cache)


def test_two_processes_running_the_same_config_share_the_cache(tmp_path, make_class_folders):
    """Both finish, one record is left, and (pinned to the CPU in fp32, where runs are deterministic) they
    computed the same metrics."""
    data = make_class_folders(classes=2, per_class=12, test_per_class=4, seed=3)
    cache = tmp_path / "cache"
    args = ["train", "--recipe", "finetune_naive", "--backbone", "simple_cnn", "--epochs", "2",
            "--per-class", "8", "--val-per-class", "2", "--data", str(data), "--device", "cpu",
            "--precision", "fp32", "--json"]
    first, second = Command(args, cache), Command(args, cache)
    results = [c.finish(300) for c in (first, second)]
    assert [code for code, _, _ in results] == [0, 0], results
    records = [json.loads(out) for _, out, _ in results]
    assert records[0]["metrics"] == records[1]["metrics"]
    assert records[0]["config"]["precision"] == "fp32" and records[0]["timing"]["device"] == "cpu"
    assert len(_records(cache)) == 1
    _all_cache_files_valid(cache)
    assert not _temporary_files(cache)
