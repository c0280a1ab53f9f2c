"""Making the machine fail under the program, for tests: a disk that is really full (a small tmpfs, where this
machine lets a test mount one), or every write under a folder failing with OSError(ENOSPC) as a full disk's do;
and hostile files (an image header claiming billions of pixels, a pickle that runs code when loaded).

Not a test module: the tests that need it import it (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

WRITE_MODES = ("w", "a", "x", "+")


class _FullDiskFile:
    """A file opened for writing on a disk with no room left: opening works (creating a file takes an inode,
    not a block), every write fails with ENOSPC. No file descriptor is handed out, so that nothing (sendfile,
    os.write) writes around it."""

    def __init__(self, real):
        self._real = real

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def writelines(self, lines):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def fileno(self):
        raise io.UnsupportedOperation("fileno")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._real.close()
        return False

    def __getattr__(self, name):
        return getattr(self._real, name)


def writes_fail_under(monkeypatch, folder: Path) -> None:
    """From now on, every file opened for writing under `folder` (through open(), io.open() or pathlib) fails
    its writes with OSError(ENOSPC), as on a full disk; files elsewhere are untouched."""
    folder = Path(folder).resolve()
    real_open = builtins.open

    def open_on_full_disk(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        if isinstance(file, (str, bytes, os.PathLike)) and any(m in mode for m in WRITE_MODES):
            target = Path(os.fsdecode(file)).resolve()
            if target == folder or folder in target.parents:
                return _FullDiskFile(handle)
        return handle

    monkeypatch.setattr(builtins, "open", open_on_full_disk)
    monkeypatch.setattr(io, "open", open_on_full_disk)


def mount_tmpfs(folder: Path, size: str = "4m") -> bool:
    """Mount a tmpfs of `size` on `folder` (created); False where this machine does not let the test mount."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0777", "tmpfs", str(folder)],
                              capture_output=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def unmount(folder: Path) -> None:
    subprocess.run(["umount", "-l", str(folder)], capture_output=True, timeout=20)


def fill(folder: Path) -> None:
    """Fill the disk that holds `folder` until a write fails with ENOSPC (the filler file stays)."""
    block = b"\0" * (1 << 16)
    with open(folder / ".filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(block)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    # A few bytes may still fit in a last partial page: take them too.
    with open(folder / ".filler-tail", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0")
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc


class Disk:
    """A folder whose disk is filled on `fill()`: a real tmpfs (`kind` "tmpfs") or writes made to fail with
    ENOSPC (`kind` "enospc")."""

    def __init__(self, kind: str, path: Path, monkeypatch):
        self.kind, self.path, self._monkeypatch = kind, path, monkeypatch

    def fill(self) -> None:
        if self.kind == "tmpfs":
            fill(self.path)
        else:
            writes_fail_under(self._monkeypatch, self.path)


def disk_fixture(request, tmp_path, monkeypatch):
    """The body of a `disk` fixture parametrized over "tmpfs" and "enospc"; the tmpfs one is skipped (not failed)
    where this machine does not let a test mount one."""
    path = tmp_path / "disk"
    if request.param == "tmpfs":
        if not mount_tmpfs(path):
            pytest.skip("this machine does not let a test mount a tmpfs (not root, or no CAP_SYS_ADMIN); the "
                        "enospc variant of this test makes the writes fail instead")
        try:
            yield Disk("tmpfs", path, monkeypatch)
        finally:
            monkeypatch.undo()
            unmount(path)
    else:
        path.mkdir()
        yield Disk("enospc", path, monkeypatch)


# -- what a failure may leave behind -----------------------------------------------------------------------


def snapshot(*roots: Path) -> dict[str, str]:
    """Every file under `roots` (fillers aside) and its sha256: compare two to see what a command changed."""
    files = {}
    for root in roots:
        if not root.exists():
            continue
        for path in sorted(root.rglob("*")):
            if path.is_file() and not path.name.startswith(".filler"):
                files[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files


def temporary_files(*roots: Path) -> list[Path]:
    return [p for root in roots if root.exists() for p in root.rglob(".tmp-*")]


def assert_complete(path: Path) -> None:
    """`path` is a whole file of its kind: JSON that parses, arrays and torch files that load."""
    if path.suffix in (".json", ".ipynb"):
        json.loads(path.read_text())
    elif path.suffix == ".npz":
        import numpy as np

        with np.load(path) as arrays:
            for name in arrays.files:
                arrays[name]
    elif path.suffix == ".pt":
        import torch

        torch.load(path, map_location="cpu", weights_only=True)


def assert_nothing_half_written(before: dict[str, str], *roots: Path) -> None:
    """After a failed command: no temporary file under `roots`, every file of `before` (a `snapshot`) as it was,
    and any new file whole (a training state kept for resuming, say)."""
    assert not temporary_files(*roots), temporary_files(*roots)
    after = snapshot(*roots)
    changed = sorted(path for path in before if after.get(path) != before[path])
    assert not changed, f"changed or removed by a failed command: {changed}"
    for path in set(after) - set(before):
        assert_complete(Path(path))


# -- hostile files ------------------------------------------------------------------------------------------


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` pixels, with almost no pixel data behind it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
            + chunk(b"IEND", b""))


class RunsCode:
    """Pickled, it calls `open(marker, "w")` when unpickled: a checkpoint with code in it."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def interrupt_after_saves(monkeypatch, count: int) -> list[int]:
    """Make the `count`-th training-state save raise KeyboardInterrupt once its file is written, as a kill
    right after an epoch would leave it. Returns the list of saves made (it grows)."""
    from cifar_tl.core import resume

    saves = []
    original = resume.StateFile.save

    def save_then_stop(self, state):
        original(self, state)
        saves.append(1)
        if len(saves) == count:
            raise KeyboardInterrupt

    monkeypatch.setattr(resume.StateFile, "save", save_then_stop)
    return saves


def comparable_record(record: dict) -> dict:
    """A run record without its clock times: its timing, and the seconds self-training's rounds took."""
    kept = {k: v for k, v in record.items() if k not in ("created", "timing")}
    if "self_training" in kept:
        rounds = [{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in kept["self_training"]["rounds"]]
        kept["self_training"] = {**kept["self_training"], "rounds": rounds}
    return kept
