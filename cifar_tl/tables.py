"""Tables of run records for the chapters' pages: settings compared, the ladder, decisions, the hardest
pairs before and after a change, and the committed reference runs beside this build's."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .metrics import hardest_pairs
from .results import machine_name
from .stats import accuracies, fmt_mean_std, fmt_points, paired_deltas


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


def probe_table(records: list[dict]) -> pd.DataFrame:
    """Per subset of a `linear_probe` run: the trained torch head against scikit-learn's logistic regression
    on the same frozen features (its C chosen on the validation split), and their difference on the test set."""
    rows = []
    for record in records:
        probe = record["metrics"].get("sklearn_probe")
        if probe is None:
            raise ValueError(f"{record['name']} has no scikit-learn probe: its recipe does not ask for one")
        head = record["metrics"]["test_accuracy"]
        rows.append({
            "seed": record["config"]["seed"],
            "head: test": f"{100 * head:.1f}%",
            "LogReg: C": f"{probe['C']:g}",
            "LogReg: val": f"{100 * probe['val_accuracy']:.1f}%",
            "LogReg: test": f"{100 * probe['test_accuracy']:.1f}%",
            "Δ test (pp)": f"{100 * (probe['test_accuracy'] - head):+.1f}",
        })
    return pd.DataFrame(rows).set_index("seed")


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


def decision_table(decisions: list[dict]) -> pd.DataFrame:
    """One row per decision: the change, the paired validation differences and the verdict's first words."""
    rows = [{
        "change": f"{d['base']} → {d['new']}",
        "validation Δ, mean (pp)": d["mean_delta_points"],
        "validation Δ per subset (pp)": ", ".join(fmt_points(v) for v in d["deltas"].values()),
        "supported by validation": "yes" if d["supported"] else "no",
        "in the ladder": "yes" if d["in_ladder"] else "no (a side step)",
    } for d in decisions]
    return pd.DataFrame(rows).set_index("change")


def ladder_table(runs_by_name: dict[str, list[dict]], bases: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per rung, in order: test accuracy (mean ± std), the paired test difference against the
    rung before (or `bases[name]`, if given) and against the first rung, and validation accuracy.

    Differences are means over the subsets both settings share, in percentage points.
    """
    names = list(runs_by_name)
    first = names[0]
    rows = []
    for i, name in enumerate(names):
        records = runs_by_name[name]
        previous = (bases or {}).get(name, names[i - 1] if i else None)

        def mean_delta(other, key="test_accuracy"):
            if other is None or other == name:
                return "–"
            deltas = paired_deltas(runs_by_name[other], records, key)
            return fmt_points(float(np.mean(list(deltas.values())))) if deltas else "–"

        rows.append({
            "rung": name,
            "compared with": previous or "–",
            "test accuracy": fmt_mean_std(accuracies(records)),
            "Δ test vs previous (pp)": mean_delta(previous),
            f"Δ test vs {first} (pp)": mean_delta(first),
            "validation accuracy": fmt_mean_std(accuracies(records, "val_accuracy")),
            "Δ validation vs previous (pp)": mean_delta(previous, "val_accuracy"),
        })
    return pd.DataFrame(rows).set_index("rung")


def reference_table(references: list[dict], own: dict[str, list[dict]] | None = None,
                    base: str | None = None) -> pd.DataFrame:
    """Reference records grouped by recipe, backbone, profile, machine, data, input and test set: test and
    validation accuracy (mean ± std over their subsets) and minutes per run, next to this build's own
    records of the same recipe (`own`, by recipe name). With `base` (a recipe name), also the paired test
    difference against that recipe's records in the same setting, per subset they share."""
    groups: dict[tuple, list[dict]] = {}
    for record in references:
        config = record["config"]
        setting = (config.get("backbone", "?"), config.get("profile", "?"), machine_name(record),
                   (record.get("data") or {}).get("name", "?"), config.get("image_size"),
                   record["metrics"].get("test_images"))
        groups.setdefault((config.get("recipe", "?"), *setting), []).append(record)
    base_column = f"test Δ vs {base}, per subset (pp)"
    rows = []
    for (recipe, *setting), records in sorted(groups.items(), key=str):
        backbone, profile, machine, data, size, test_images = setting
        records = sorted(records, key=lambda r: r["config"].get("seed", -1))
        seconds = [r["timing"]["total_seconds"] for r in records if "total_seconds" in (r.get("timing") or {})]
        mine = (own or {}).get(recipe)
        row = {
            "recipe": recipe,
            "backbone": backbone,
            "profile": profile,
            "machine": machine,
            "data": data,
            "input": f"{size}×{size}" if size else "?",
            "test images": f"{test_images:,}" if isinstance(test_images, int) else "?",
            "subsets (seeds)": ", ".join(str(r["config"].get("seed", "?")) for r in records),
            "test accuracy": fmt_mean_std(accuracies(records)),
            "validation accuracy": fmt_mean_std(accuracies(records, "val_accuracy")),
            "minutes per run": f"{np.mean(seconds) / 60:.1f}" if seconds else "?",
            "this build's test accuracy": fmt_mean_std(accuracies(mine)) if mine else "–",
        }
        if base is not None:
            deltas = paired_deltas(groups.get((base, *setting), []), records) if recipe != base else {}
            row[base_column] = ", ".join(f"s{seed} {fmt_points(d)}" for seed, d in deltas.items()) or "–"
        rows.append(row)
    columns = ["recipe", "backbone", "profile", "machine", "data", "input", "test images", "subsets (seeds)",
               "test accuracy", "validation accuracy", "minutes per run", "this build's test accuracy"]
    if own is None:
        columns.remove("this build's test accuracy")
    if base is not None:
        columns.append(base_column)
    return pd.DataFrame(rows, columns=columns)


def split_constant_columns(table: pd.DataFrame, keep=("recipe",)) -> tuple[pd.DataFrame, str]:
    """The table without the columns whose value is the same on every row (other than `keep`), and a
    sentence that states those values once: a narrower table that says the same."""
    constant = [c for c in table.columns if c not in keep and len(table) > 1 and table[c].nunique(dropna=False) == 1]
    said = "; ".join(f"{column}: {table[column].iloc[0]}" for column in constant)
    return table.drop(columns=constant), (f"Every row: {said}." if said else "")
