"""A full disk under the program: while it writes decoded arrays, a run record, a training state, a checkpoint,
an executed chapter or the book. Each time: one line naming the file (and the space needed, where known), exit
status 2, the earlier file as it was, no temporary file left behind.

Every case runs twice: on a real full disk (a small tmpfs, mounted where this machine allows it; skipped
elsewhere) and with every write under the folder failing with OSError(ENOSPC), as a full disk's writes do.
"""

from __future__ import annotations

import errno
import re
import shutil

import pytest
import torch

import faults
from cifar_tl import cli
from cifar_tl.core.errors import DiskFullError
from cifar_tl.core.files import atomic_path, save_torch, write_json
from cifar_tl.data.sources import source_checksum
from cifar_tl.models.backbones import create_model
from cifar_tl.models.checkpoints import load_checkpoint, save_checkpoint

TRAIN = ["train", "--backbone", "simple_cnn", "--recipe", "linear_probe", "--profile", "smoke", "--per-class", "5",
         "--val-per-class", "2", "--epochs", "1"]


@pytest.fixture(params=["tmpfs", "enospc"])
def disk(request, tmp_path, monkeypatch):
    yield from faults.disk_fixture(request, tmp_path, monkeypatch)


def run_cli(capsys, *args: str) -> tuple[int, str]:
    """`cifar-tl ARGS` in this process: (exit status, the one error line)."""
    status = cli.main(list(args))
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("cifar-tl: error:")]
    assert len(errors) == 1, err
    return status, errors[0]


def test_the_library_writes_name_the_file_and_keep_the_earlier_one(disk):
    earlier_json, earlier_pt = disk.path / "record.json", disk.path / "state.pt"
    write_json(earlier_json, {"epoch": 1})
    save_torch(earlier_pt, {"weights": torch.zeros(10)})
    before = faults.snapshot(disk.path)
    disk.fill()

    with pytest.raises(DiskFullError) as caught:
        write_json(earlier_json, {"epoch": 2, "history": list(range(1000))})
    message = str(caught.value)
    assert str(earlier_json) in message and "needed" in message and "its earlier version is unchanged" in message
    assert "\n" not in message
    with pytest.raises(DiskFullError, match=r"state\.pt \(about 4\.0 MB needed"):
        save_torch(earlier_pt, {"weights": torch.zeros(1_000_000)})
    with pytest.raises(DiskFullError, match=r"new\.npy.*nothing was written"):
        with atomic_path(disk.path / "new.npy") as tmp:
            with open(tmp, "wb") as f:
                f.write(b"\0" * 100_000)
                f.flush()
    faults.assert_nothing_half_written(before, disk.path)


def test_decoded_arrays_on_a_full_disk(disk, tiny_dataset, monkeypatch, capsys):
    cache = disk.path / "cache"
    monkeypatch.setenv("CIFAR_TL_CACHE", str(cache))
    arrays = cache / "data" / f"{source_checksum(str(tiny_dataset)).split(':')[1][:24]}.npz"
    arrays.parent.mkdir(parents=True)
    arrays.write_bytes(b"an earlier cache file, cut short")  # unreadable: the data is decoded again
    before = faults.snapshot(cache)
    disk.fill()

    status, line = run_cli(capsys, *TRAIN, "--data", str(tiny_dataset))
    assert status == 2
    assert re.search(rf"no space left on the disk to write {re.escape(str(arrays))} \(about [\d.]+ kB needed", line)
    assert "its earlier version is unchanged" in line
    faults.assert_nothing_half_written(before, cache)


def test_record_and_training_state_on_a_full_disk(disk, tiny_dataset, monkeypatch, capsys):
    """The run trains, then cannot write its training state or its record: the earlier record stays."""
    cache = disk.path / "cache"
    monkeypatch.setenv("CIFAR_TL_CACHE", str(cache))
    assert cli.main([*TRAIN, "--data", str(tiny_dataset)]) == 0  # the arrays and a first record
    capsys.readouterr()
    (record,) = (cache / "runs").glob("*.json")
    before = faults.snapshot(cache)
    disk.fill()

    status, line = run_cli(capsys, *TRAIN, "--data", str(tiny_dataset), "--force")
    assert status == 2
    assert "no space left on the disk to write" in line and str(cache / "runs") in line
    faults.assert_nothing_half_written(before, cache)
    assert record.is_file()


def test_training_state_on_a_real_full_disk(tmp_path):
    """The per-epoch training state (cifar_tl.core.resume) on a disk that fills: the earlier state stays, so the run
    resumes from it. (A real tmpfs only, as long as the state is written by torch's C++ writer, which an injected
    ENOSPC cannot reach.)"""
    from cifar_tl.core.resume import StateFile

    path = tmp_path / "disk"
    if not faults.mount_tmpfs(path, "2m"):
        pytest.skip("this machine does not let a test mount a tmpfs")
    try:
        state = StateFile(path / "runs" / "a-run.state")
        state.save({"epoch": 1, "weights": torch.ones(10)})
        earlier = state.path.read_bytes()
        faults.fill(path)
        with pytest.raises(DiskFullError, match=r"a-run\.state/train\.pt"):
            state.save({"epoch": 2, "weights": torch.ones(1_000_000)})
        assert state.path.read_bytes() == earlier and not faults.temporary_files(path)
        assert state.load(torch.device("cpu"))["epoch"] == 1
    finally:
        faults.unmount(path)


def test_checkpoint_on_a_full_disk(disk, tiny_dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CIFAR_TL_CACHE", str(tmp_path / "cache"))  # the cache has room; the checkpoint's disk not
    checkpoint = disk.path / "model.pt"
    save_checkpoint(checkpoint, create_model("simple_cnn", 3, pretrained=False), ["apple", "banana", "cherry"], 32,
                    {"name": "earlier"})
    before = faults.snapshot(disk.path)
    disk.fill()

    status, line = run_cli(capsys, *TRAIN, "--data", str(tiny_dataset), "--save-checkpoint", str(checkpoint))
    assert status == 2
    assert f"no space left on the disk to write {checkpoint} (about" in line and "MB needed" in line
    faults.assert_nothing_half_written(before, disk.path)
    assert load_checkpoint(checkpoint)[1]["record"]["name"] == "earlier"


def test_executed_chapter_on_a_full_disk(disk, capsys):
    out = disk.path / "executed"
    out.mkdir()
    (out / "01-data.ipynb").write_text('{"an earlier": "executed chapter"}\n')
    before = faults.snapshot(disk.path)
    disk.fill()

    status, line = run_cli(capsys, "run", "01", "--profile", "smoke", "--out", str(out))
    assert status == 2
    assert f"no space left on the disk to write {out / '01-data.ipynb'}" in line
    faults.assert_nothing_half_written(before, disk.path)


def test_book_on_a_full_disk(disk, capsys):
    build = disk.path / "build"
    (build / "html").mkdir(parents=True)
    (build / "html" / "index.html").write_text("<p>the book built before</p>\n")
    before = faults.snapshot(disk.path)
    disk.fill()

    status, line = run_cli(capsys, "book", "--profile", "smoke", "--build-dir", str(build))
    assert status == 2
    assert f"no space left on the disk to write {build / 'source'}" in line
    faults.assert_nothing_half_written(before, disk.path)
    assert sorted(p.name for p in build.iterdir()) == ["html"]  # no half-copied staging folder


def test_a_real_full_disk_during_torch_save_to_a_path(tmp_path):
    """torch.save to a path writes from C++ and says only 'unexpected pos'; atomic_path still names the disk.
    (Run on a real tmpfs only: an injected ENOSPC cannot reach torch's C++ writer.)"""
    path = tmp_path / "disk"
    if not faults.mount_tmpfs(path, "1m"):
        pytest.skip("this machine does not let a test mount a tmpfs")
    try:
        target = path / "state.pt"
        with atomic_path(target) as tmp:
            torch.save({"epoch": 1}, tmp)
        earlier = target.read_bytes()
        faults.fill(path)
        with pytest.raises(DiskFullError, match="state.pt"):
            with atomic_path(target) as tmp:
                torch.save({"weights": torch.zeros(1_000_000)}, tmp)
        assert target.read_bytes() == earlier and not faults.temporary_files(path)
    finally:
        faults.unmount(path)


@pytest.mark.parametrize("error, line", [
    (OSError(errno.ENOSPC, "No space left on device", "/x/file"), "no space left on the disk to write /x/file"),
    (OSError(errno.EDQUOT, "Disk quota exceeded", "/x/file"), "no space left on the disk to write /x/file"),
    (PermissionError(errno.EACCES, "Permission denied", "/x/file"), "Permission denied: /x/file"),
    (shutil.Error([("/a", "/b", "[Errno 28] No space left on device")]), "no space left on the disk to write /b"),
])
def test_os_errors_that_reach_the_command_line_are_one_line(error, line, monkeypatch, capsys):
    """A machine failure met outside the library's own writes (here: raised by the book's build)."""
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr("cifar_tl.book.build.build_book", fail)
    status, printed = run_cli(capsys, "book", "--profile", "smoke")
    assert status == 2 and line in printed
