"""Tables of run records for the chapters' pages: settings compared, the ladder, decisions, the hardest
pairs before and after a change, and the committed reference runs beside this build's."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cifar_tl.core.metrics import hardest_pairs
from cifar_tl.core.stats import accuracies, fmt_mean_std, fmt_points, paired_deltas
from cifar_tl.records.store import machine_name


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
        row = {
            "setting": name,
            "test accuracy": fmt_mean_std(accuracies(records)),
            "validation accuracy": fmt_mean_std(accuracies(records, "val_accuracy")),
        }
        if len(names) > 1:  # one setting alone has nothing to be paired with
            row[f"paired Δ vs {names[0]} (pp)"] = "–" if name == names[0] else ", ".join(f"{100 * d:+.1f}" for d in deltas)
        row["subsets (seeds)"] = ", ".join(str(r["config"]["seed"]) for r in records)
        rows.append(row)
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
    """One row per decision: the change, the mean paired validation difference with its 95% interval (when
    `ladder.decision` gives one), the per-subset differences, the outcome and whether the ladder takes the step."""
    from cifar_tl.book.pages import decision_outcome

    rows = [{
        "change": f"{d['base']} → {d['new']}",
        "validation Δ, mean (pp)": d["mean_delta_points"],
        "95% interval (pp)": d.get("interval_points") or "–",
        "validation Δ per subset (pp)": ", ".join(fmt_points(v) for v in d["deltas"].values()),
        "outcome on validation": decision_outcome(d),
        "in the ladder": "yes (measured, not selected)" if d["in_ladder"] else "no (a side step)",
    } for d in decisions]
    table = pd.DataFrame(rows).set_index("change")
    if (table["95% interval (pp)"] == "–").all():
        table = table.drop(columns="95% interval (pp)")
    return table


def pairs_reading(pairs: pd.DataFrame) -> dict:
    """What a `pairs_table` says, for a sentence that cannot claim more than it shows: the pairs that fell,
    the pairs that rose (with their counts before and after) and the pairs that stayed."""
    before, after = pairs.columns[0], pairs.columns[1]
    fell = [p for p in pairs.index if pairs.loc[p, after] < pairs.loc[p, before]]
    rose = [p for p in pairs.index if pairs.loc[p, after] > pairs.loc[p, before]]
    same = [p for p in pairs.index if p not in fell and p not in rose]
    described = [f"{p} ({pairs.loc[p, before]:,} → {pairs.loc[p, after]:,})" for p in rose]
    return {"fell": fell, "rose": rose, "same": same, "rose_described": described, "labels": (before, after)}


def pairs_sentence(pairs: pd.DataFrame) -> str:
    """One sentence on a pairs table: how many of its pairs the second setting confuses less, and every pair it
    confuses more, named with both counts."""
    reading = pairs_reading(pairs)
    before, after = reading["labels"]
    n = len(pairs)
    fewer = "all" if len(reading["fell"]) == n else str(len(reading["fell"]))
    text = f"Of the {n} pairs {before} confuses most, {after} confuses {fewer} less often"
    if reading["rose"]:
        text += f" and {len(reading['rose'])} more often: {', '.join(reading['rose_described'])}"
    if reading["same"]:
        text += f"; {len(reading['same'])} {'stays' if len(reading['same']) == 1 else 'stay'} the same"
    return text + "."


def probe_grid_edges(records: list[dict]) -> dict[int, str]:
    """The subsets whose scikit-learn probe chose a C at an end of its grid (seed → "largest" or "smallest"),
    where the best penalty may lie beyond the values tried."""
    edges = {}
    for record in records:
        probe = record["metrics"].get("sklearn_probe") or {}
        grid = probe.get("C_grid")
        if not grid or probe.get("C") is None:
            continue
        if probe["C"] == max(grid):
            edges[record["config"]["seed"]] = "largest"
        elif probe["C"] == min(grid):
            edges[record["config"]["seed"]] = "smallest"
    return edges


def probe_time_split(records: list[dict]) -> dict[str, float]:
    """Where a linear probe run's seconds go, as shares of its total (means over the records): the frozen
    backbone's pass over the training and validation images, the head's epochs, the test evaluation, the rest."""
    shares = {"features": [], "head": [], "test": [], "other": []}
    for record in records:
        timing = record["timing"]
        total = timing["total_seconds"]
        parts = {"features": timing.get("feature_seconds", 0.0), "head": timing.get("train_seconds", 0.0),
                 "test": timing.get("eval_seconds", 0.0)}
        for key, value in parts.items():
            shares[key].append(value / total)
        shares["other"].append(max(0.0, 1 - sum(parts.values()) / total))
    return {key: float(np.mean(values)) for key, values in shares.items()}


def directed_confusions(records: list[dict], classes: list[str], k: int = 8) -> pd.DataFrame:
    """fastbook's `most_confused`: the `k` most frequent (true class → predicted class) errors, summed over the
    records' subsets, with the share of that true class's test images they take."""
    summed = np.sum([r["metrics"]["confusion_matrix"] for r in records], axis=0)
    totals = summed.sum(1)
    rows = [(int(summed[i, j]), classes[i], classes[j], summed[i, j] / max(totals[i], 1))
            for i in range(len(classes)) for j in range(len(classes)) if i != j]
    rows.sort(key=lambda row: (-row[0], row[1], row[2]))
    return pd.DataFrame([{"true class": t, "predicted as": p, "errors": c, "share of the true class": f"{100 * s:.1f}%"}
                         for c, t, p, s in rows[:k]])


def per_class_accuracy(runs: dict[str, list[dict]], classes: list[str]) -> pd.DataFrame:
    """Each class's test accuracy (its recall), summed over the subsets, one column per setting."""
    columns = {}
    for name, records in runs.items():
        summed = np.sum([r["metrics"]["confusion_matrix"] for r in records], axis=0)
        columns[name] = summed.diagonal() / np.maximum(summed.sum(1), 1)
    return pd.DataFrame(columns, index=pd.Index(classes, name="class"))


def distances_from_pretrained(records: list[dict]) -> tuple[pd.DataFrame | None, list[str]]:
    """Each layer group's relative distance from its pretrained weights, ||w - w0|| / ||w0||, at the end of
    training (mean over the records that stored it; the head's is from its random start), and the names of
    the records that predate the measurement and lack it."""
    final, missing = [], []
    for record in records:
        distance = (record.get("model") or {}).get("distance_from_pretrained")
        if distance is None and record.get("history") and "distance_from_pretrained" in record["history"][-1]:
            distance = record["history"][-1]["distance_from_pretrained"]
        if distance is None:
            missing.append(record.get("name", "?"))
        else:
            final.append(distance)
    if not final:
        return None, missing
    table = pd.DataFrame(final)
    return table.mean().rename("relative distance from the pretrained weights").to_frame(), missing


def distance_history(records: list[dict]) -> pd.DataFrame | None:
    """Each group's relative distance after every epoch (mean over the records that stored it), or None."""
    frames = []
    for record in records:
        rows = [dict(h["distance_from_pretrained"], epoch=h["epoch"]) for h in record.get("history", [])
                if h.get("distance_from_pretrained")]
        if rows:
            frames.append(pd.DataFrame(rows).set_index("epoch"))
    if not frames:
        return None
    return pd.concat(frames).groupby(level=0).mean()


def confident_mistakes(records: list[dict], k: int = 16) -> tuple[pd.DataFrame | None, list[str]]:
    """The `k` wrong test predictions made with the highest probability (fastbook's top losses), over the
    records that stored each image's confidence (`metrics.test_confidence`); and the names of those that did
    not. Columns: seed, test index, true, predicted (class indices), probability."""
    rows, missing = [], []
    for record in records:
        metrics = record["metrics"]
        confidence = metrics.get("test_confidence")
        if confidence is None:
            missing.append(record.get("name", "?"))
            continue
        predicted, truth = np.asarray(metrics["test_predictions"]), np.asarray(metrics["test_labels"])
        where, confidence = np.asarray(metrics["test_indices"]), np.asarray(confidence, dtype=float)
        for i in np.flatnonzero(predicted != truth):
            rows.append({"seed": record["config"]["seed"], "test index": int(where[i]), "true": int(truth[i]),
                         "predicted": int(predicted[i]), "probability": float(confidence[i])})
    if not rows:
        return (None if missing else pd.DataFrame(columns=["seed", "test index", "true", "predicted", "probability"]),
                missing)
    table = pd.DataFrame(rows).sort_values(["probability", "seed", "test index"], ascending=[False, True, True])
    return table.head(k).reset_index(drop=True), missing


def step_effects(runs: dict[str, list[dict]], bases: dict[str, str], decisions: dict[str, dict]) -> pd.DataFrame:
    """The ladder's steps with what each measured and cost: the paired validation difference with its interval
    (from the decisions), the paired test difference, and minutes per run against the base's."""
    rows = []
    for name, base in bases.items():
        if name not in runs or base not in runs:
            continue
        decided = decisions.get(name)
        tests = paired_deltas(runs[base], runs[name])
        minutes = np.mean([r["timing"]["total_seconds"] for r in runs[name]]) / 60
        base_minutes = np.mean([r["timing"]["total_seconds"] for r in runs[base]]) / 60
        rows.append({
            "step": f"{base} → {name}",
            "validation Δ (pp)": decided["mean_delta_points"] if decided else "–",
            "95% interval (pp)": (decided or {}).get("interval_points") or "–",
            "test Δ (pp)": fmt_points(float(np.mean(list(tests.values())))) if tests else "–",
            "minutes per run": f"{minutes:.1f}",
            "extra minutes": f"{minutes - base_minutes:+.1f}",
        })
    table = pd.DataFrame(rows)
    if len(table) and (table["95% interval (pp)"] == "–").all():
        table = table.drop(columns="95% interval (pp)")
    return table.set_index("step") if len(table) else table


def search_table(records: dict, reference: str = "full") -> pd.DataFrame:
    """Chapter 12's search (`campaign.search_records`): one row per candidate, its backbone and input size, its
    validation accuracy and the difference from `reference` on the default backbone, and its minutes. One
    subset each, so a difference here says what to run on three subsets, not what is better."""
    from cifar_tl.records.campaign import DEFAULT_BACKBONE
    from cifar_tl.training.recipes import RECIPES

    base = next((r for p, r in records.items() if p.recipe == reference and p.backbone == DEFAULT_BACKBONE), None)
    rows = []
    for planned, record in records.items():
        val = record["metrics"]["val_accuracy"]
        rows.append({
            "candidate": f"{planned.recipe} on {planned.backbone}",
            "input (px)": record["config"]["image_size"],
            "change": (RECIPES[planned.recipe].description.removeprefix(f"{reference} with ")
                       .removesuffix(" (a search candidate)") if planned.recipe != reference else "none"),
            "subset": record["config"]["seed"],
            "validation accuracy": f"{100 * val:.1f}%",
            f"Δ vs {reference} (pp)": "–" if base is None or record is base
                                      else fmt_points(val - base["metrics"]["val_accuracy"]),
            "test read": "no" if record["metrics"].get("test_read") is False else "yes",
            "minutes": f"{record['timing']['total_seconds'] / 60:.1f}",
        })
    return pd.DataFrame(rows).set_index("candidate")


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
