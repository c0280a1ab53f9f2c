"""Atomic file writes and the cache directory: nothing half-written survives an interruption or a full disk."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from cifar_tl.core.errors import DiskFullError, UserError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; `exclusive_lock` then locks nothing
    fcntl = None

# errno values that mean "the disk (or the user's quota) is full".
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})
NOT_WRITABLE_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
# torch.save to a path writes from C++ and fails on a full disk with a RuntimeError that does not say why; when
# one comes with less than this much room left on the disk, the disk is what failed.
_NEARLY_FULL_BYTES = 1 << 20
# The folder above the package: a checkout (notebooks/, book/, results/, pyproject.toml) when cifar_tl runs from
# one or is installed editable from one; elsewhere (an installed wheel) just site-packages.
CHECKOUT = Path(__file__).resolve().parents[2]


def cache_dir(*parts: str) -> Path:
    """`CIFAR_TL_CACHE` (default `~/.cache/cifar-tl`), joined with `parts` and created."""
    root = Path(os.environ.get("CIFAR_TL_CACHE") or Path.home() / ".cache" / "cifar-tl")
    path = root.expanduser().joinpath(*parts)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _raise_write_error(exc, path, None, None)
    return path


def free_bytes(path: str | os.PathLike) -> int | None:
    """Bytes free for this user on the disk that holds `path` (or its nearest existing parent), or None."""
    path = Path(path).absolute()
    for folder in (path, *path.parents):
        if folder.exists():
            with contextlib.suppress(OSError):
                return shutil.disk_usage(folder).free
            return None
    return None


def is_disk_full(exc: BaseException, folder: str | os.PathLike | None = None) -> bool:
    """Whether `exc`, or an exception it was raised from, is a write that found the disk (or quota) full.

    With `folder`: also a RuntimeError (torch's C++ writer) raised while that folder's disk is all but full."""
    seen, current = set(), exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in DISK_FULL_ERRNOS:
            return True
        if isinstance(current, shutil.Error) and f"[Errno {errno.ENOSPC}]" in str(current):
            return True  # copytree gathers its errors as text
        current = current.__cause__ or current.__context__
    if folder is not None and isinstance(exc, RuntimeError):
        free = free_bytes(folder)
        return free is not None and free < _NEARLY_FULL_BYTES
    return False


def _raise_write_error(exc: OSError, path: Path, needed: int | None, earlier: bool | None):
    """Raise, for an OSError met while writing `path`, a DiskFullError, a UserError for a folder that cannot be
    written, else `exc` itself. Call it inside the `except` clause."""
    if is_disk_full(exc):
        raise DiskFullError(path, needed, free_bytes(path), earlier) from exc
    if exc.errno in NOT_WRITABLE_ERRNOS:
        where = exc.filename or path
        raise UserError(f"cannot write {path} ({exc.strerror or exc.__class__.__name__}: {where}): point "
                        "CIFAR_TL_CACHE (or the command's output folder) at a folder you can write") from exc
    raise exc


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, needed: int | None = None):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    Readers see either the old file or the complete new one. A crash or Ctrl-C leaves at most a
    temporary file whose name starts with `.tmp-`, never a truncated `path`; any other failure deletes the
    temporary file. A full disk is a `DiskFullError` naming `path` (and `needed`, the bytes the file takes,
    where the caller knows them); a folder that cannot be written is a `UserError`.
    """
    path = Path(path)
    earlier = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.stem}.", suffix=path.suffix, dir=path.parent)
        os.close(fd)
    except OSError as exc:
        _raise_write_error(exc, path, needed, earlier)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes files owner-only; a cache may be shared
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        full = not isinstance(exc, (DiskFullError, KeyboardInterrupt)) and is_disk_full(exc, path.parent)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if full:
            raise DiskFullError(path, needed, free_bytes(path.parent), earlier) from exc
        raise


@contextlib.contextmanager
def full_disk_named(path: str | os.PathLike, needed: int | None = None):
    """Turn a full disk met in the block (writes that are not `atomic_path`'s: copying a folder, a subprocess's
    output) into a `DiskFullError` naming `path`. The caller removes what the block left half-done."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as exc:
        if is_disk_full(exc):
            raise DiskFullError(path, needed, free_bytes(path)) from exc
        raise


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, waiting: str | None = None):
    """Hold an exclusive lock on the file `path` (created empty if need be) for the block; while another
    process holds it, print `waiting` once and wait. The operating system drops a lock when its process ends,
    killed or not, so a dead holder never blocks anyone. Where no lock can be had (Windows, a folder that
    cannot be written, a file system without locks) the block runs unlocked, and writing fails later with
    its own clear message."""
    try:
        handle = open(path, "a") if fcntl is not None else None
    except OSError:
        handle = None
    if handle is None:
        yield
        return
    with handle:
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if waiting:
                    print(waiting, file=sys.stderr, flush=True)
                fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError:  # no locks on this file system
            pass
        yield  # closing the file releases the lock


def write_json(path: str | os.PathLike, obj, compact: bool = False) -> None:
    """Write `obj` as JSON atomically; `compact` puts it on one line (run records: their long lists of
    predictions would otherwise take a line per number)."""
    data = (json.dumps(obj, indent=None if compact else 1, sort_keys=False) + "\n").encode()
    with atomic_path(path, needed=len(data)) as tmp:
        tmp.write_bytes(data)


def tensor_bytes(obj) -> int:
    """The bytes of the tensors (and NumPy arrays) in `obj`, through dicts, lists and tuples: about what
    `torch.save(obj)` takes on disk."""
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    if hasattr(obj, "element_size") and hasattr(obj, "numel"):
        return int(obj.element_size() * obj.numel())
    return int(getattr(obj, "nbytes", 0) or 0)


def save_torch(path: str | os.PathLike, obj) -> Path:
    """`torch.save(obj)` to `path` atomically, through a Python file object, so that a full disk is an
    OSError(ENOSPC) (a `DiskFullError` naming `path` and the bytes needed) rather than torch's C++ writer's
    RuntimeError."""
    import torch

    path = Path(path)
    with atomic_path(path, needed=tensor_bytes(obj) or None) as tmp:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
    return path


def os_error_line(exc: OSError) -> str:
    """One line for an OSError that reached the command line: what failed, and on which file."""
    if isinstance(exc, shutil.Error) and exc.args and isinstance(exc.args[0], list) and exc.args[0]:
        source, target, why = exc.args[0][0]
        if f"[Errno {errno.ENOSPC}]" in str(why):
            return str(DiskFullError(target, free=free_bytes(target)))
        return f"could not copy {source} to {target}: {why}"
    where = exc.filename or ""
    if is_disk_full(exc):
        return str(DiskFullError(where or "a file", free=free_bytes(where) if where else None))
    what = exc.strerror or str(exc) or exc.__class__.__name__
    return f"{what}{f': {where}' if where else ''} (run with --debug for the traceback)"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_json(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()
