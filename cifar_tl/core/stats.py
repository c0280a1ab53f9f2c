"""Statistics over run records: accuracies, mean ± std over subsets, paired differences, and their formats."""

from __future__ import annotations

import numpy as np


def accuracies(records: list[dict], key: str = "test_accuracy") -> list[float]:
    return [r["metrics"][key] for r in records]


def mean_std(values) -> tuple[float, float]:
    v = np.asarray(values, dtype=float)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def fmt_mean_std(values, percent: bool = True) -> str:
    """Mean ± standard deviation over the values that exist, with n: "61.7 ± 3.7% (n=3)"; "–" when none does
    (e.g. a self-training round that kept no pseudo-label has no accuracy)."""
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    mean, std = mean_std(values)
    scale, unit = (100, "%") if percent else (1, "")
    return f"{mean * scale:.1f} ± {std * scale:.1f}{unit} (n={len(values)})"


def fmt_points(value: float) -> str:
    """A difference of two accuracies (fractions) in signed percentage points: 0.021 → "+2.1"."""
    return f"{100 * value:+.1f}"


def _by_seed(records: list[dict], key: str) -> dict[int, float]:
    return {r["config"]["seed"]: r["metrics"][key] for r in records}


def paired_deltas(base_records: list[dict], new_records: list[dict], key: str = "test_accuracy") -> dict[int, float]:
    """`new - base` per subset (seed) that both have, in the order of `new_records`."""
    base = _by_seed(base_records, key)
    return {seed: value - base[seed] for seed, value in _by_seed(new_records, key).items() if seed in base}
