"""Atomic file writes and the cache directory: nothing half-written survives an interruption."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """`CIFAR_TL_CACHE` (default `~/.cache/cifar-tl`), joined with `parts` and created."""
    root = Path(os.environ.get("CIFAR_TL_CACHE") or Path.home() / ".cache" / "cifar-tl")
    path = root.expanduser().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    Readers see either the old file or the complete new one. A crash or Ctrl-C leaves at most a
    temporary file whose name starts with `.tmp-`, never a truncated `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes files owner-only; a cache may be shared
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, obj, compact: bool = False) -> None:
    """Write `obj` as JSON atomically; `compact` puts it on one line (run records: their long lists of
    predictions would otherwise take a line per number)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=None if compact else 1, sort_keys=False) + "\n")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_json(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()
