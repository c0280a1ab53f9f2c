"""Numbers and tables for the chapters, computed from run records (never typed in)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .recipes import get_profile


def accuracies(records: list[dict], key: str = "test_accuracy") -> list[float]:
    return [r["metrics"][key] for r in records]


def mean_std(values) -> tuple[float, float]:
    v = np.asarray(values, dtype=float)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def fmt_mean_std(values, percent: bool = True) -> str:
    mean, std = mean_std(values)
    scale, unit = (100, "%") if percent else (1, "")
    return f"{mean * scale:.1f} ± {std * scale:.1f}{unit} (n={len(values)})"


def comparison_table(runs: dict[str, list[dict]]) -> pd.DataFrame:
    """One row per setting: test and validation accuracy, mean ± std over its subsets, and the
    paired difference against the first setting (same seeds, so the same training subsets)."""
    names = list(runs)
    base = {r["config"]["seed"]: r["metrics"]["test_accuracy"] for r in runs[names[0]]}
    rows = []
    for name in names:
        records = runs[name]
        deltas = [r["metrics"]["test_accuracy"] - base[r["config"]["seed"]] for r in records
                  if r["config"]["seed"] in base]
        rows.append({
            "setting": name,
            "test accuracy": fmt_mean_std(accuracies(records)),
            "validation accuracy": fmt_mean_std(accuracies(records, "val_accuracy")),
            f"paired Δ vs {names[0]} (pp)": ", ".join(f"{100 * d:+.1f}" for d in deltas),
            "subsets (seeds)": ", ".join(str(r["config"]["seed"]) for r in records),
        })
    return pd.DataFrame(rows).set_index("setting")


def hardest_pairs(confusion, classes: list[str], k: int = 5) -> list[tuple[str, int]]:
    """The `k` class pairs most often confused, counting both directions (a→b plus b→a)."""
    m = np.asarray(confusion)
    both = m + m.T
    pairs = [(both[i, j], f"{classes[i]} – {classes[j]}") for i in range(len(classes)) for j in range(i + 1, len(classes))]
    pairs.sort(key=lambda p: (-p[0], p[1]))
    return [(name, int(count)) for count, name in pairs[:k]]


def pairs_table(before: dict, after: dict, classes: list[str], labels=("before", "after"), k: int = 5) -> pd.DataFrame:
    """The hardest pairs of `before` (confusions summed over its subsets) with their counts after."""
    sum_before = np.sum([r["metrics"]["confusion_matrix"] for r in before], axis=0)
    sum_after = np.sum([r["metrics"]["confusion_matrix"] for r in after], axis=0)
    both_after = sum_after + sum_after.T
    rows = []
    for name, count in hardest_pairs(sum_before, classes, k):
        a, b = (classes.index(c) for c in name.split(" – "))
        later = int(both_after[a, b])
        rows.append({"pair": name, labels[0]: count, labels[1]: later,
                     "reduction": f"{100 * (count - later) / count:.0f}%" if count else "–"})
    return pd.DataFrame(rows).set_index("pair")


def glue(name: str, value, display: bool = False) -> None:
    """Store `value` for the page's prose (MyST-NB's glue); a no-op where myst_nb is absent (Colab)."""
    try:
        from myst_nb import glue as myst_glue
    except ImportError:
        return
    myst_glue(name, value, display=display)


def page_header(profile: str, backbone: str | None, records: list[dict], data: dict | None = None) -> str:
    """Markdown naming the backbone, the data (with its note) and the profile of this page's runs."""
    chosen = get_profile(profile)
    data = data or (records[0]["data"] if records else {})
    tested = ""
    if records:
        metrics = records[0]["metrics"]
        tested = f", {metrics['test_images']:,} test images"
        tested += " (a class-balanced cap of the test split)" if metrics["test_limited"] else ""
    lines = [
        f"**Backbone:** `{backbone}`" if backbone else None,
        f"**Data:** {data.get('name', '?')}{tested}",
        f"**Profile:** `{profile}`: {chosen.description}",
    ]
    text = "  \n".join(line for line in lines if line)
    if data.get("note"):
        text += f"\n\n*{data['note']}.*"
    if not chosen.meaningful:
        text += (
            "\n\n> **Warning: smoke profile.** This page was built with tiny inputs and one or two epochs, only to "
            "prove the code runs. Its numbers are not meaningful; build it with `--profile full` for real ones."
        )
    return text
