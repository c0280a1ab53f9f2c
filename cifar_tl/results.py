"""The reference run records committed to results/: reading a folder of them, and naming their machines."""

from __future__ import annotations

import json
from pathlib import Path


def read_records(folder) -> tuple[list[dict], list[str]]:
    """Every run record (JSON) under `folder`, recursively, and the names of files that are not records.

    A missing folder gives no records. A record is a JSON object with config, metrics and machine.
    """
    folder = Path(folder)
    records, skipped = [], []
    if not folder.is_dir():
        return records, skipped
    for path in sorted(folder.rglob("*.json")):
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
    """The GPU a record ran on, else its CPU and how many cores it had."""
    machine = record.get("machine") or {}
    if machine.get("gpu"):
        return machine["gpu"]
    cores = f" ({machine['cpu_count']} cores)" if machine.get("cpu_count") else ""
    return f"{machine.get('cpu') or '?'}{cores}"
