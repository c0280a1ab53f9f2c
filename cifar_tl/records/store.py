"""The record store: where run records are kept and found.

Records are JSON, written atomically, in the cache (`CIFAR_TL_CACHE/runs/`) and, committed, in the checkout's
`results/<machine>/` (an installed package ships a copy). This module finds a record by its identity, the
committed record that stands for a config when the book renders without training, reads a folder of them,
and names the machine a record ran on.
"""

from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path

from cifar_tl import __version__
from cifar_tl.core.files import CHECKOUT, cache_dir
from cifar_tl.data.sources import source_checksum
from cifar_tl.models.backbones import create_model
from cifar_tl.records.identity import RunConfig, identity, record_name, stale_reason


def record_path(config: RunConfig, checksum: str | None = None, weights_sha256: str | None = None) -> Path:
    """Where the cache keeps the record of `config` (the weights' checksum from the backbone if not given)."""
    checksum = checksum or source_checksum(config.data)
    if weights_sha256 is None:
        weights_sha256 = create_model(config.backbone, 10, pretrained=True).weights["sha256"]
    return cache_dir("runs") / f"{record_name(identity(config, checksum, weights_sha256))}.json"


def read_record(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# The checkout's committed records, and the copy of them that an installed package ships (pyproject maps
# results/ to the subpackage cifar_tl.reference_results), so Colab or a venv reads the same numbers.
_SHIPPED_RESULTS = Path(__file__).resolve().parents[1] / "reference_results"


def results_dirs(writable: bool = False) -> list[Path]:
    """Folders of committed records: `$CIFAR_TL_RESULTS` (paths separated by os.pathsep), else the
    checkout's `results/` when there is one, else (to read only, not with `writable`) the records shipped
    inside the installed package."""
    chosen = os.environ.get("CIFAR_TL_RESULTS")
    if chosen:
        return [Path(p).expanduser().absolute() for p in chosen.split(os.pathsep) if p]
    if (CHECKOUT / "pyproject.toml").is_file() and (CHECKOUT / "results").is_dir():
        return [CHECKOUT / "results"]
    return [_SHIPPED_RESULTS] if _SHIPPED_RESULTS.is_dir() and not writable else []


def records_location() -> str:
    """Where the committed records are read from, in words for a page."""
    folders = results_dirs()
    if not folders:
        return "no results folder"
    if folders == [_SHIPPED_RESULTS]:
        return f"the copy shipped with the installed cifar-tl {__version__}"
    if folders == [CHECKOUT / "results"]:
        return "`results/` of this checkout"
    return ", ".join(f"`{folder}`" for folder in folders)


@functools.lru_cache(maxsize=256)
def _committed_record(path: Path, size: int, mtime_ns: int) -> dict | None:
    """A committed record's content, parsed once while the file is unchanged (a book build asks for the
    same records from every chapter)."""
    return read_record(path)


def committed_records() -> list[tuple[Path, dict]]:
    """Every readable run record under the results folders, with its path."""
    found = []
    for folder in results_dirs():
        for path in record_files(folder):
            stat = path.stat()
            record = _committed_record(path, stat.st_size, stat.st_mtime_ns)
            if _is_run_record(record):
                found.append((path, record))
    return found


def cached_records() -> list[tuple[Path, dict]]:
    """Every readable run record in this machine's cache (`CIFAR_TL_CACHE/runs/`), with its path."""
    return [(path, record) for path in sorted(cache_dir("runs").glob("*.json"))
            if _is_run_record(record := read_record(path))]


def _is_run_record(record) -> bool:
    return isinstance(record, dict) and {"config", "metrics", "identity"} <= record.keys()


def find_record(name: str, ident: dict) -> dict | None:
    """The record named `name` with exactly this identity: in the cache, else among the committed ones."""
    candidates = [cache_dir("runs") / f"{name}.json"]
    candidates += [path for folder in results_dirs() for path in folder.glob(f"*/{name}.json")]
    for path in candidates:
        record = read_record(path) if path.exists() else None
        if record is not None and record.get("identity") == ident:
            return record
    return None


def _standing_for(config: RunConfig, records: list[tuple[Path, dict]] | None) -> list[dict]:
    """The records that match `config` in every field but the data's path and the precision, with a recipe
    that is not stale and the same data checksum when `config.data` is at hand."""
    wanted = {k: v for k, v in config.key().items() if k != "precision"}
    checksum = _checksum_if_at_hand(config.data)
    matches = []
    for _, record in committed_records() if records is None else records:
        key = {k: v for k, v in record["identity"]["config"].items() if k != "precision"}
        if key != wanted or stale_reason(record) is not None:
            continue
        if checksum is not None and record["identity"]["data"] != checksum:
            continue
        matches.append(record)
    return matches


def reference_record(config: RunConfig, records: list[tuple[Path, dict]] | None = None) -> dict | None:
    """The committed record that stands for `config` when the book is rendered without training.

    Any record of the same run counts, whatever its precision (the page says which; see `_standing_for`).
    Among several, an fp32 one (on a CPU it repeats bit for bit, and most of the book's records are fp32: a
    bf16 record of the same run is kept to measure what the precision changes), then the most recent.
    """
    return max(_standing_for(config, records), key=lambda r: (r["config"]["precision"] == "fp32", r.get("created", "")),
               default=None)


def records_by_precision(config: RunConfig, records: list[tuple[Path, dict]] | None = None) -> dict[str, dict]:
    """The most recent record of `config`'s run in each precision it has been made in: {"fp32": ..., "bf16": ...}."""
    found = {}
    for record in sorted(_standing_for(config, records), key=lambda r: r.get("created", "")):
        found[record["config"]["precision"]] = record
    return found


@functools.lru_cache(maxsize=8)
def _checksum_at(source: str, size: int, mtime_ns: int) -> str:
    return source_checksum(source)


def _checksum_if_at_hand(source: str) -> str | None:
    """The checksum of a data path that exists here (cached while the file is unchanged), else None."""
    path = Path(source)
    if not path.exists():
        return None
    stat = path.stat()
    return _checksum_at(source, stat.st_size, stat.st_mtime_ns) if path.is_file() else source_checksum(source)


# Speed measurements (`cifar-tl bench --out results/<machine>/bench/…`) sit beside a machine's records.
BENCH_FOLDER = "bench"


def record_files(folder: Path) -> list[Path]:
    """The JSON files under `folder`, recursively and sorted, that may be run records: those in `bench/`
    folders are speed measurements and are left out."""
    return [path for path in sorted(folder.rglob("*.json")) if BENCH_FOLDER not in path.relative_to(folder).parts[:-1]]


def read_records(folder) -> tuple[list[dict], list[str]]:
    """Every run record (JSON) under `folder`, recursively, and the names of files that are not records.

    A missing folder gives no records. A record is a JSON object with config, metrics and machine.
    Files in `bench/` folders (speed measurements, not runs) are neither.
    """
    folder = Path(folder)
    records, skipped = [], []
    for path in record_files(folder) if folder.is_dir() else []:
        record = read_record(path)
        if isinstance(record, dict) and {"config", "metrics"} <= record.keys():
            records.append(record)
        else:
            skipped.append(path.name)
    return records, skipped


def _cpu_parts(machine: dict) -> tuple[str | None, tuple[int, int] | None, int | None, str | None]:
    """A record's CPU: its name, its family and model numbers (records made before they were kept lack them),
    its cores and the widest vector ISA PyTorch used."""
    numbers = ((machine["cpu_family"], machine["cpu_model_number"])
               if machine.get("cpu_family") is not None and machine.get("cpu_model_number") is not None else None)
    return machine.get("cpu"), numbers, machine.get("cpu_count"), machine.get("cpu_capability")


def machine_name(record: dict) -> str:
    """The GPU a record ran on, else its CPU, how many cores it had and its vector ISA when recorded
    (two CPUs of one name can differ in AVX-512, which decides bf16 and speed); and the precision."""
    machine, timing = record.get("machine") or {}, record.get("timing") or {}
    precision = timing.get("precision") or (record.get("config") or {}).get("precision")
    suffix = f", {precision}" if precision else ""
    if machine.get("gpu") and str(timing.get("device", "cuda")).startswith("cuda"):  # not a CPU run beside a GPU
        return machine["gpu"] + suffix
    cpu, numbers, cores, capability = _cpu_parts(machine)
    details = [f"family {numbers[0]} model {numbers[1]}"] if numbers else []
    details += [f"{cores} cores"] if cores else []
    details += [capability] if capability else []
    return f"{cpu or '?'}{' (' + ', '.join(details) + ')' if details else ''}{suffix}"


def machine_slug_of(record: dict) -> str:
    """The folder name of the machine a record ran on (`results/<slug>/`): the GPU, else the CPU's name,
    family and model numbers (when the record has them), cores and vector ISA."""
    machine = record.get("machine") or {}
    if machine.get("gpu"):
        name = machine["gpu"]
    else:
        cpu, numbers, cores, capability = _cpu_parts(machine)
        name = f"{cpu}{f' f{numbers[0]}m{numbers[1]}' if numbers else ''} {cores}core {capability or ''}"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "machine"
