"""The reference run records committed to results/: reading a folder of them, and naming their machines."""

from __future__ import annotations

import json
from pathlib import Path


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
    if not folder.is_dir():
        return records, skipped
    for path in record_files(folder):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            skipped.append(path.name)
            continue
        if isinstance(record, dict) and {"config", "metrics"} <= record.keys():
            records.append(record)
        else:
            skipped.append(path.name)
    return records, skipped


def machine_name(record: dict) -> str:
    """The GPU a record ran on, else its CPU, how many cores it had and its vector ISA when recorded
    (two CPUs of one name can differ in AVX-512, which decides bf16 and speed); and the precision."""
    machine, timing = record.get("machine") or {}, record.get("timing") or {}
    precision = timing.get("precision") or (record.get("config") or {}).get("precision")
    suffix = f", {precision}" if precision else ""
    if machine.get("gpu") and str(timing.get("device", "cuda")).startswith("cuda"):  # not a CPU run beside a GPU
        return machine["gpu"] + suffix
    details = ([f"family {machine['cpu_family']} model {machine['cpu_model_number']}"]
               if machine.get("cpu_family") is not None and machine.get("cpu_model_number") is not None else [])
    details += [f"{machine['cpu_count']} cores"] if machine.get("cpu_count") else []
    details += [machine["cpu_capability"]] if machine.get("cpu_capability") else []
    return f"{machine.get('cpu') or '?'}{' (' + ', '.join(details) + ')' if details else ''}{suffix}"
