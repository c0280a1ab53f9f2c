"""The exception types for user mistakes and machine failures: the CLI prints the message as one line and
exits 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: a message that says what was wrong and what to do."""


class DiskFullError(UserError):
    """A write ran out of disk space (or quota). Written through `files.atomic_path`, the file is as it was
    before (its temporary file is renamed onto it only when complete, and deleted on failure); elsewhere the
    caller removes what it had written."""

    def __init__(self, path, needed: int | None = None, free: int | None = None, earlier: bool | None = None):
        self.path, self.needed, self.free = path, needed, free
        space = ", ".join(part for part in (
            f"about {format_bytes(needed)} needed" if needed else "",
            f"{format_bytes(free)} free" if free is not None else "",
        ) if part)
        kept = "its earlier version is unchanged" if earlier else "nothing was written" if earlier is False else ""
        said = "; ".join(part for part in (space, kept) if part)
        super().__init__(
            f"no space left on the disk to write {path}{f' ({said})' if said else ''}: free some space, "
            "or point CIFAR_TL_CACHE (or the command's output folder) at a disk with room, and run it again"
        )


def format_bytes(n: int | float) -> str:
    """`n` bytes for a person: 512 B, 1.5 kB, 23.4 MB, 1.2 GB (powers of 1000)."""
    n = float(n)
    for unit in ("B", "kB", "MB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"
