"""Figures for the chapters: training curves, confusion matrices, image grids, runs and costs compared.

Every function returns a matplotlib Figure with an opaque white background (the book's dark mode
dims transparent figures).
"""

from __future__ import annotations

import matplotlib

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

matplotlib.rcParams.update({
    "figure.facecolor": "white",
    "axes.facecolor": "white",
    "savefig.facecolor": "white",
    "savefig.transparent": False,
    "figure.dpi": 100,
    "axes.spines.top": False,
    "axes.spines.right": False,
})


def training_curves(records: list[dict], title: str = "") -> plt.Figure:
    """Loss and accuracy per epoch, train (dashed) against validation (solid), one line per subset."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.6))
    for i, record in enumerate(records):
        history = record["history"]
        epochs = [h["epoch"] for h in history]
        label = f"seed {record['config']['seed']}"
        color = f"C{i}"
        for ax, key in ((ax_loss, "loss"), (ax_acc, "accuracy")):
            ax.plot(epochs, [h[f"train_{key}"] for h in history], "--", color=color, alpha=0.8)
            ax.plot(epochs, [h[f"val_{key}"] for h in history], "-", color=color, label=label)
        for boundary in [h["epoch"] - 0.5 for a, h in zip(history, history[1:]) if h["stage"] != a["stage"]]:
            for ax in (ax_loss, ax_acc):
                ax.axvline(boundary, color="grey", lw=0.8, ls=":")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss (dashed: train, solid: validation)")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy (dashed: train, solid: validation)", ylim=(0, 1.02))
    ax_acc.legend(loc="lower right", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def confusion_heatmap(confusion, classes: list[str], title: str = "", normalise: bool = True) -> plt.Figure:
    """Rows are true classes, columns predictions; normalised rows show each class's recall."""
    matrix = np.asarray(confusion, dtype=float)
    if normalise:
        matrix = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6.4, 5.4))
    sns.heatmap(matrix, annot=True, fmt=".2f" if normalise else ".0f", cmap="Blues", square=True, cbar=False,
                xticklabels=classes, yticklabels=classes, ax=ax, annot_kws={"fontsize": 7})
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.tight_layout()
    return fig


def image_grid(images, labels, classes: list[str], predictions=None, ncols: int = 10, size: float = 1.2,
               title: str = "") -> plt.Figure:
    """Images with their labels; with predictions, wrong ones are titled in red as 'pred (true)'."""
    images = np.asarray(images)
    n = len(images)
    nrows = max(1, int(np.ceil(n / ncols)))
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * size, nrows * (size + 0.25)), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        ax.imshow(images[i], interpolation="nearest")
        true = classes[int(labels[i])]
        if predictions is None:
            ax.set_title(true, fontsize=8)
        else:
            guess = classes[int(predictions[i])]
            wrong = guess != true
            ax.set_title(f"{guess}\n({true})" if wrong else guess, fontsize=7, color="red" if wrong else "black")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def compare_runs(values: dict[str, list[float]], title: str = "", ylabel: str = "test accuracy") -> plt.Figure:
    """Mean ± standard deviation per named setting, with each subset's value as a dot."""
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(values), 3.6))
    names = list(values)
    for i, name in enumerate(names):
        v = np.asarray(values[name], dtype=float)
        ax.bar(i, v.mean(), yerr=v.std(ddof=1) if len(v) > 1 else 0, color=f"C{i}", alpha=0.6, capsize=6)
        ax.scatter(np.full(len(v), i), v, color="black", s=12, zorder=3)
    ax.set_xticks(range(len(names)), names, rotation=15)
    ax.set(ylabel=ylabel, title=title, ylim=(0, 1))
    fig.tight_layout()
    return fig


def upsampling_strip(image, sizes=(32, 64, 128, 224)) -> plt.Figure:
    """One 32x32 image shown at each input size, as the model receives it (bilinear)."""
    import torch

    from cifar_tl.data.augment import to_float_nchw

    x = to_float_nchw(torch.as_tensor(np.asarray(image))[None])
    fig, axes = plt.subplots(1, len(sizes), figsize=(2.4 * len(sizes), 2.6))
    for ax, size in zip(axes, sizes):
        resized = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        ax.imshow(resized[0].permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
        ax.set_title(f"{size}x{size}", fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    return fig


def cost_scatter(records_by_label: dict[str, list[dict]], title: str = "") -> plt.Figure:
    """Seconds per run (log scale) against test accuracy: one dot per run, a cross at each setting's mean."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    from cifar_tl.core.stats import accuracies, mean_std

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    fig.patch.set_facecolor("white")
    ax.set_facecolor("white")
    for i, (label, records) in enumerate(records_by_label.items()):
        seconds = [r["timing"]["total_seconds"] for r in records]
        accuracy = accuracies(records)
        ax.scatter(seconds, accuracy, color=f"C{i}", s=22, alpha=0.7)
        mean_acc, std_acc = mean_std(accuracy)
        ax.errorbar(np.mean(seconds), mean_acc, yerr=std_acc, color=f"C{i}", marker="X", markersize=10,
                    capsize=4, label=label, linestyle="none")
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set(xlabel="seconds per run (wall clock, log scale)", ylabel="test accuracy", ylim=(0, 1),
           title=title or "cost against accuracy")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def size_grid(images, labels, classes: list[str], predictions: dict[int, np.ndarray], trained_size: int,
              title: str = "") -> plt.Figure:
    """Rows: images; columns: input sizes. Each cell shows the image as the model receives it at that
    size (bilinear, as the library resizes) and the model's prediction there, in red when wrong."""
    import torch
    import torch.nn.functional as F

    from cifar_tl.data.augment import to_float_nchw

    images = np.asarray(images)
    sizes = list(predictions)
    fig, axes = plt.subplots(len(images), len(sizes), figsize=(1.7 * len(sizes), 1.9 * len(images)), squeeze=False)
    fig.patch.set_facecolor("white")
    for row, image in enumerate(images):
        x = to_float_nchw(torch.as_tensor(image)[None])
        for col, size in enumerate(sizes):
            ax = axes[row, col]
            shown = x if x.shape[-1] == size else F.interpolate(
                x, size=(size, size), mode="bilinear", align_corners=False, antialias=x.shape[-1] > size)
            ax.imshow(shown[0].permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
            guess, true = classes[int(predictions[size][row])], classes[int(labels[row])]
            ax.set_title(f"{size}px{' (trained)' if size == trained_size else ''}\n→ {guess}", fontsize=8,
                         color="black" if guess == true else "red")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if col == 0:
                ax.set_ylabel(f"true: {true}", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def ladder_story(test: dict[str, list[float]], validation: dict[str, list[float]], title: str = "",
                 reference: tuple[float, str] | None = None) -> plt.Figure:
    """The rungs of the book top to bottom: each subset's test accuracy as a dot, the mean ± std as a bar, and
    the validation mean as an open diamond. `reference` (value, label) draws a dotted line (another source's
    figure, for comparison)."""
    names = list(test)
    fig, ax = plt.subplots(figsize=(7.4, 0.42 * len(names) + 1.3))
    first_validation = next((name for name in names if validation.get(name)), None)  # the one legend entry
    for i, name in enumerate(names):
        y = len(names) - 1 - i
        values = np.asarray(test[name], dtype=float)
        ax.barh(y, values.mean(), xerr=values.std(ddof=1) if len(values) > 1 else 0, color="C0", alpha=0.35,
                capsize=3, height=0.6)
        ax.scatter(values, np.full(len(values), y), color="C0", s=12, zorder=3)
        ax.text(values.mean() + 0.01, y, f"{100 * values.mean():.1f}%", va="center", fontsize=8)
        if validation.get(name):
            ax.scatter(np.mean(validation[name]), y, marker="D", facecolors="none", edgecolors="C1", s=30, zorder=4,
                       label="validation (mean)" if name == first_validation else None)
    if reference is not None:
        ax.axvline(reference[0], color="grey", lw=1, ls=":")
        ax.text(reference[0], len(names) - 0.4, reference[1], fontsize=7, ha="right", color="grey")
    ax.set_yticks(range(len(names)), names[::-1])
    ax.set(xlim=(0, 1), xlabel="test accuracy (bars: mean ± std; dots: subsets)", title=title)
    if any(validation.values()):
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def mistake_gallery(images, truth, predictions, probabilities, classes: list[str], ncols: int = 8,
                    size: float = 1.4, title: str = "") -> plt.Figure:
    """Wrong predictions titled 'predicted p (true)': fastbook's `plot_top_losses` for run records."""
    images = np.asarray(images)
    n = len(images)
    nrows = max(1, int(np.ceil(n / ncols)))
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * size, nrows * (size + 0.45)), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        ax.imshow(images[i], interpolation="nearest")
        ax.set_title(f"{classes[int(predictions[i])]} {probabilities[i]:.2f}\n(true: {classes[int(truth[i])]})",
                     fontsize=7, color="red")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def distance_curves(histories: dict[str, "object"], title: str = "") -> plt.Figure:
    """Relative distance from the pretrained weights per epoch, one panel per recipe, one line per layer group
    (stem dark to top light; the head, which starts random, left out)."""
    fig, axes = plt.subplots(1, len(histories), figsize=(5.2 * len(histories), 3.4), squeeze=False, sharey=True)
    for ax, (name, frame) in zip(axes[0], histories.items()):
        groups = [g for g in frame.columns if g != "head"]
        colours = plt.cm.viridis(np.linspace(0, 0.9, max(len(groups), 1)))
        for colour, group in zip(colours, groups):
            ax.plot(frame.index, frame[group], color=colour, label=group)
        ax.set(title=name, xlabel="epoch", yscale="log")
    axes[0][0].set_ylabel("||w − w0|| / ||w0||")
    axes[0][-1].legend(fontsize=6, ncol=2, loc="lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
