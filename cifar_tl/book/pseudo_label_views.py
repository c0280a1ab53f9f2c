"""Self-training and consistency-training (FixMatch) runs read back for chapter 13: the unlabelled images used, pseudo-label accuracy per class and by
round, validation by round, and accuracy against the share of the pool kept. Tables and figures from records only.

The pseudo-label accuracies come from each record's `self_training.diagnostics`, computed after training against
the pool's withheld labels (the training code never had them).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from cifar_tl.book import plots  # noqa: F401  (the book's figure style)


def _section(record: dict) -> dict:
    section = record.get("self_training")
    if section is None:
        raise ValueError(f"record {record.get('name')} is not a self-training run (it has no self_training section)")
    return section


def _mean(values) -> float:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else float("nan")


def _percent(value) -> str:
    return "–" if value is None or value != value else f"{100 * value:.1f}%"


def unlabelled_table(records: list[dict]) -> pd.DataFrame:
    """One row per subset and round: how many unlabelled images were used and how, the pseudo-labels' accuracy
    (withheld labels, for the reader), and validation accuracy of the teacher and of the round's student."""
    rows = []
    for record in records:
        section = _section(record)
        diagnostics = {r["round"]: r for r in section["diagnostics"]["rounds"]}
        teacher_val = section["teacher_val_accuracy"]
        for r in section["rounds"]:
            checked = diagnostics[r["round"]]
            rows.append({
                "seed": record["config"]["seed"],
                "round": r["round"],
                "pool images labelled": f"{r['pool_images']:,} of {section['pool']['available']:,}",
                "views": r["teacher_views"],
                "kept": f"{r['pseudo_labels']:,}",
                "cap per class": "none" if r["per_class_cap"] is None else f"{r['per_class_cap']:,}",
                "threshold": f"{r['threshold']:g}",
                "student's images": f"{r['student_train_images']:,}",
                "teacher right, whole pool": _percent(checked["teacher_pool_accuracy"]),
                "pseudo-labels right": _percent(checked["pseudo_label_accuracy"]),
                "validation before": _percent(teacher_val),
                "validation after": _percent(r["student_val_accuracy"]),
            })
            teacher_val = r["student_val_accuracy"]
    return pd.DataFrame(rows).set_index(["seed", "round"])


def rounds(records: list[dict]) -> list[int]:
    return sorted({r["round"] for record in records for r in _section(record)["rounds"]})


def pseudo_label_accuracy_by_class(records: list[dict]) -> pd.DataFrame:
    """Pseudo-label accuracy per class (the share of the images given that pseudo-label that truly belong to
    it), mean over the subsets: one column per round, a last row over all classes."""
    classes = records[0]["data"]["classes"]
    table = {}
    for number in rounds(records):
        found = [r for record in records for r in _section(record)["diagnostics"]["rounds"] if r["round"] == number]
        column = {name: _mean(r["pseudo_label_accuracy_per_class"][name] for r in found) for name in classes}
        column["all classes"] = _mean(r["pseudo_label_accuracy"] for r in found)
        table[f"round {number}"] = column
    return pd.DataFrame(table)


def kept_classes(records: list[dict], round_number: int = 1) -> pd.DataFrame:
    """Per class, summed over the subsets: how many pool images the teacher predicted as it, how many kept it
    as their pseudo-label, and how many of the kept images truly belong to it (withheld labels)."""
    classes = records[0]["data"]["classes"]
    predicted = dict.fromkeys(classes, 0)
    kept = dict.fromkeys(classes, 0)
    truly = dict.fromkeys(classes, 0)
    for record in records:
        section = _section(record)
        r = next(r for r in section["rounds"] if r["round"] == round_number)
        checked = next(r for r in section["diagnostics"]["rounds"] if r["round"] == round_number)
        for name in classes:
            predicted[name] += r["predicted_per_class"][name]
            kept[name] += r["pseudo_labels_per_class"][name]
            truly[name] += checked["kept_true_class_counts"][name]
    return pd.DataFrame({"predicted as the class": predicted, "kept with that pseudo-label": kept,
                         "kept images truly of the class": truly})


def pseudo_label_accuracy_figure(records: list[dict]) -> plt.Figure:
    """Bars: pseudo-label accuracy per class, one bar per round (mean over subsets, each subset a dot)."""
    classes = records[0]["data"]["classes"]
    numbers = rounds(records)
    width = 0.8 / len(numbers)
    fig, ax = plt.subplots(figsize=(10, 3.8))
    for i, number in enumerate(numbers):
        found = [r for record in records for r in _section(record)["diagnostics"]["rounds"] if r["round"] == number]
        x = np.arange(len(classes)) + (i - (len(numbers) - 1) / 2) * width
        means = [_mean(r["pseudo_label_accuracy_per_class"][name] for r in found) for name in classes]
        ax.bar(x, np.nan_to_num(means), width=width * 0.95, color=f"C{i}", alpha=0.7, label=f"round {number}")
        for r in found:
            values = [r["pseudo_label_accuracy_per_class"][name] for name in classes]
            ax.scatter(x, [np.nan if v is None else v for v in values], color="black", s=8, zorder=3)
    ax.set_xticks(range(len(classes)), classes, rotation=20)
    ax.set(ylabel="pseudo-labels right", ylim=(0, 1.02),
           title="pseudo-label accuracy per class (withheld labels, after training; dots: subsets)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def validation_by_round_figure(records: list[dict]) -> plt.Figure:
    """Validation accuracy of the first teacher (round 0) and of each round's student, one line per subset."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for i, record in enumerate(records):
        section = _section(record)
        xs = [0] + [r["round"] for r in section["rounds"]]
        ys = [section["teacher_val_accuracy"]] + [r["student_val_accuracy"] for r in section["rounds"]]
        ax.plot(xs, ys, "o-", color=f"C{i}", label=f"seed {record['config']['seed']}")
    numbers = [0, *rounds(records)]
    ax.set_xticks(numbers, ["teacher\n(labels only)"] + [f"round {n}" for n in numbers[1:]])
    ax.set(ylabel="validation accuracy", title="validation accuracy by round")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def coverage_figure(records: list[dict]) -> plt.Figure:
    """How right the teacher's labels are for the most confident share of the pool, as the share grows (withheld
    labels), per subset and round; a cross marks the share the recipe kept and its accuracy."""
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for i, record in enumerate(records):
        section = _section(record)
        kept = {r["round"]: r for r in section["rounds"]}
        for checked in section["diagnostics"]["rounds"]:
            curve = checked["accuracy_by_share_kept"]
            style = "-" if checked["round"] == 1 else ":"
            label = f"seed {record['config']['seed']}, round {checked['round']}"
            ax.plot([p["share"] for p in curve], [p["accuracy"] for p in curve], style, color=f"C{i}", label=label)
            used = kept[checked["round"]]
            if checked["pseudo_label_accuracy"] is not None and used["pool_images"]:
                ax.scatter(used["pseudo_labels"] / used["pool_images"], checked["pseudo_label_accuracy"], marker="x",
                           color=f"C{i}", s=50, zorder=3)
    ax.set(xlabel="share of the pool kept, most confident first", ylabel="teacher's labels right", xlim=(0, 1.02),
           title="pseudo-label accuracy against how much of the pool is kept\n(x: what the recipe kept)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _consistency(record: dict) -> dict:
    section = record.get("consistency")
    if section is None:
        raise ValueError(f"record {record.get('name')} is not a consistency-training run (it has no consistency section)")
    return section


def consistency_table(records: list[dict]) -> pd.DataFrame:
    """Per subset: the pool, the share of pool images whose weak view reached the threshold (the mask rate) in
    the first and last consistency epoch, and (from the diagnostics, after training) how right the last
    epoch's weak-view classes and pseudo-labels were."""
    rows = []
    for record in records:
        section = _consistency(record)
        epochs, last = section["epochs"], section["diagnostics"]["last_epoch"] or {}
        rows.append({
            "subset": record["config"]["seed"],
            "pool images": section["pool"]["used"],
            "epochs": len(epochs),
            "mask rate, first epoch": _percent(epochs[0]["mask_rate"] if epochs else None),
            "mask rate, last epoch": _percent(epochs[-1]["mask_rate"] if epochs else None),
            "pseudo-labels, last epoch": last.get("pseudo_labels"),
            "weak view right": _percent(last.get("weak_view_accuracy")),
            "pseudo-labels right": _percent(last.get("pseudo_label_accuracy")),
        })
    return pd.DataFrame(rows).set_index("subset")


def mask_rate_figure(records: list[dict]) -> plt.Figure:
    """The mask rate (share of pool images that trained) epoch by epoch of the consistency training, per subset."""
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for i, record in enumerate(records):
        epochs = _consistency(record)["epochs"]
        ax.plot([e["epoch"] for e in epochs], [e["mask_rate"] for e in epochs], marker="o", color=f"C{i}",
                label=f"subset {record['config']['seed']}")
    threshold = _consistency(records[0])["settings"]["threshold"]
    ax.set(xlabel="epoch of the run", ylabel="pool images above the threshold", ylim=(0, 1.02),
           title=f"share of unlabelled images whose weak view reached {threshold:.0%} confidence")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
