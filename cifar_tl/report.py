"""Numbers and tables for the chapters, computed from run records (never typed in)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .recipes import RECIPES, get_profile


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


# -- the technique chapters: decisions on validation, the ladder, recipe differences ---------------------------

# Each rung of the ladder and the recipe it changes (Recipe.builds_on). The main line runs from finetune_naive
# to full; ft_gradual is a side step that the main line does not take.
LADDER_BASES: dict[str, str] = {r.name: r.builds_on for r in RECIPES.values() if r.builds_on}


def ladder(last: str = "full") -> list[str]:
    """The main line of the ladder, from its first recipe to `last` (following LADDER_BASES back)."""
    names = [last]
    while names[-1] in LADDER_BASES:
        names.append(LADDER_BASES[names[-1]])
    return names[::-1]


def _by_seed(records: list[dict], key: str) -> dict[int, float]:
    return {r["config"]["seed"]: r["metrics"][key] for r in records}


def paired_deltas(base_records: list[dict], new_records: list[dict], key: str = "test_accuracy") -> dict[int, float]:
    """`new - base` per subset (seed) that both have, in the order of `new_records`."""
    base = _by_seed(base_records, key)
    return {seed: value - base[seed] for seed, value in _by_seed(new_records, key).items() if seed in base}


def _points(value: float) -> str:
    return f"{100 * value:+.1f}"


def decision(base_records: list[dict], new_records: list[dict], in_ladder: bool = True, base_name: str | None = None,
             new_name: str | None = None) -> dict:
    """Whether a change is kept, decided by VALIDATION accuracy only (paired by subset), never by test.

    The change is supported when the mean paired validation difference is above zero. `in_ladder` says
    whether recipes.py's ladder takes the step anyway (it is fixed in the code), which decides how an
    unsupported step is worded. Returns the numbers (fractions; `*_points` strings in percentage points)
    and `verdict`, a plain-text sentence fragment for the page's prose (no Markdown: `{glue:text}` shows
    it as it is).
    """
    deltas = paired_deltas(base_records, new_records, "val_accuracy")
    if not deltas:
        raise ValueError("the two settings share no subset (seed): nothing to compare")
    mean = float(np.mean(list(deltas.values())))
    n = len(deltas)
    rose = sum(d > 0 for d in deltas.values())
    supported = mean > 0
    base_name = base_name or base_records[0]["config"]["recipe"]
    new_name = new_name or new_records[0]["config"]["recipe"]
    moved = "rose" if mean > 0 else "fell" if mean < 0 else "did not change"
    by = f" by {_points(abs(mean)).lstrip('+')} points" if mean != 0 else ""
    evidence = (f"validation accuracy {moved}{by} on average over {n} subset{'s' if n != 1 else ''}, rising in "
                f"{rose} of them ({', '.join(_points(d) for d in deltas.values())} points)")
    if in_ladder and supported:
        verdict = f"kept: {evidence}"
    elif in_ladder:
        verdict = (f"not supported in this build: {evidence}; the ladder in the code keeps the step anyway, "
                   "pending the full-profile reference runs")
    elif supported:
        verdict = (f"supported in this build but not taken: {evidence}; the ladder in the code continues "
                   f"from {base_name} without it, pending the full-profile reference runs")
    else:
        verdict = f"not kept: {evidence}; the ladder continues from {base_name}"
    return {
        "base": base_name,
        "new": new_name,
        "mean_delta": mean,
        "mean_delta_points": _points(mean),
        "deltas": deltas,
        "n": n,
        "rose_in": rose,
        "supported": supported,
        "in_ladder": in_ladder,
        "verdict": verdict,
    }


def profile_caveat(profile: str) -> str:
    """A sentence on how far a verdict of this profile can be trusted."""
    chosen = get_profile(profile)
    if not chosen.meaningful:
        return (f"This page was built with the {chosen.name} profile, so the verdict shows how the decision is "
                "made, not what it would be; build it with the full profile for a real one.")
    return (f"With {len(chosen.seeds)} subsets, a difference smaller than the spread between subsets is within the "
            "luck of the draw; the per-subset differences show whether the subsets agree.")


def decision_table(decisions: list[dict]) -> pd.DataFrame:
    """One row per decision: the change, the paired validation differences and the verdict's first words."""
    rows = [{
        "change": f"{d['base']} → {d['new']}",
        "validation Δ, mean (pp)": d["mean_delta_points"],
        "validation Δ per subset (pp)": ", ".join(_points(v) for v in d["deltas"].values()),
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
            return _points(float(np.mean(list(deltas.values())))) if deltas else "–"

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


def _stage_summary(stage: dict) -> str:
    """A stage in one line: only what differs from a plain, all-layers, constant-rate stage."""
    from .recipes import Stage

    defaults = Stage(epochs=1, lr=1.0).__dict__
    trains = {"all": "every group", "head": "the head"}.get(stage["train"], f"the top {stage['train']} groups")
    parts = [f"{stage['epochs']} epochs", f"lr {stage['lr']:g}", f"trains {trains}"]
    for key in ("lr_decay", "schedule", "warmup_epochs", "optimizer", "frozen_bn", "trainable_bn", "augment"):
        if stage[key] != defaults[key]:
            parts.append(f"{key} {stage[key]}")
    return ", ".join(parts)


def _flat_settings(recipe) -> dict[str, str]:
    settings = {}
    for key, value in recipe.as_dict().items():
        if key in ("name", "description", "stages", "builds_on"):
            continue
        settings[key] = "–" if value is None else str(value)
    settings["stages"] = str(len(recipe.stages))
    for i, stage in enumerate(recipe.as_dict()["stages"], 1):
        settings[f"stage {i}"] = _stage_summary(stage)
        for key, value in stage.items():
            settings[f"stage {i} · {key}"] = str(value)
    return settings


def recipe_diff(base: str, new: str) -> pd.DataFrame:
    """The settings in which recipe `new` differs from recipe `base`, read from recipes.py.

    A stage that both recipes have shows the fields that differ; a stage only one has shows in one line.
    """
    from .recipes import get_recipe

    a, b = _flat_settings(get_recipe(base)), _flat_settings(get_recipe(new))
    shared_stages = min(len(get_recipe(base).stages), len(get_recipe(new).stages))
    rows = []
    for key in dict.fromkeys([*a, *b]):
        is_summary = key.startswith("stage ") and "·" not in key
        if key.startswith("stage ") and int(key.split()[1]) <= shared_stages:
            if is_summary:
                continue  # a stage both have: its differing fields are listed one by one
        elif key.startswith("stage ") and not is_summary:
            continue  # a stage only one has: its one-line summary stands for its fields
        if a.get(key, "–") != b.get(key, "–"):
            rows.append({"setting": key, base: a.get(key, "–"), new: b.get(key, "–")})
    return pd.DataFrame(rows, columns=["setting", base, new]).set_index("setting")


def learning_rates(recipe: str, groups: list[str], train_images: int = 1000, max_epochs: int | None = None) -> pd.DataFrame:
    """Every layer group's learning rate at every optimizer step, as the trainer sets it.

    Rows are indexed by epoch (fractional: step / steps per epoch, counting from 0 over all stages);
    a group that a stage keeps frozen is NaN. `groups` are the model's group names, stem first (a run
    record holds them in `record["model"]["groups"]`); `max_epochs` caps each stage as a profile does.
    """
    from types import SimpleNamespace

    from .recipes import get_recipe, scaled_stages
    from .train import group_learning_rates, lr_factor

    chosen = get_recipe(recipe)
    shim = SimpleNamespace(group_names=lambda: list(groups), name=recipe)
    steps_per_epoch = train_images // min(chosen.batch_size, train_images)
    rows, start = [], 0
    for index, stage in enumerate(scaled_stages(chosen, max_epochs, None), 1):
        base = group_learning_rates(shim, stage)
        total = steps_per_epoch * stage.epochs
        warmup = round(stage.warmup_epochs * steps_per_epoch)
        for step in range(total):
            factor = lr_factor(stage.schedule, step, total, warmup)
            row = {"epoch": start + step / steps_per_epoch, "stage": index}
            row.update({g: base[g] * factor if g in base else np.nan for g in groups})
            rows.append(row)
        start += stage.epochs
    return pd.DataFrame(rows).set_index("epoch")


# -- BatchNorm: what it learns and what it only measures -------------------------------------------------------


def batchnorm_summary(model) -> pd.DataFrame:
    """Per layer group of a `Classifier`: BatchNorm layers, their learnable parameters (scale and shift,
    trained by gradients) and their running statistics (mean and variance: measured, not trained)."""
    from torch import nn

    rows = []
    for name, modules in model.layer_groups():
        layers = [m for module in modules for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        rows.append({
            "group": name,
            "BatchNorm layers": len(layers),
            "learnable (γ, β)": sum(m.weight.numel() + m.bias.numel() for m in layers if m.affine),
            "running statistics (μ, σ²)": sum(m.running_mean.numel() + m.running_var.numel() for m in layers
                                              if m.track_running_stats),
            "all parameters": sum(p.numel() for m in modules for p in m.parameters()),
        })
    return pd.DataFrame(rows).set_index("group")


def batchnorm_shift(model, images, image_size: int) -> pd.DataFrame:
    """How far a batch's own statistics sit from the stored (ImageNet) ones, BatchNorm layer by layer.

    `images` is a uint8 batch (N, H, W, 3). The model runs in eval mode (normalising with the stored
    statistics, as frozen BatchNorm does) while each layer's input statistics are measured. Per layer:
    the mean |batch mean − stored mean| in units of the stored standard deviation, and the median ratio
    of the batch variance to the stored variance (1 would mean the data looks like ImageNet to it).
    """
    import torch
    from torch import nn

    from .augment import prepare

    found, hooks = [], []
    for group, modules in model.layer_groups():
        for module in modules:
            for sub in module.modules():
                if isinstance(sub, nn.modules.batchnorm._BatchNorm) and sub.track_running_stats:
                    found.append((group, sub))

    stats: dict[int, tuple] = {}

    def hook(index):
        def measure(module, inputs, output):
            x = inputs[0].float()
            dims = [0, 2, 3] if x.ndim == 4 else [0]
            stats[index] = (x.mean(dims), x.var(dims, unbiased=False))
        return measure

    for i, (_, layer) in enumerate(found):
        hooks.append(layer.register_forward_hook(hook(i)))
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            x = prepare(torch.as_tensor(np.asarray(images)), image_size, model.mean, model.std)
            model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    rows = []
    for i, (group, layer) in enumerate(found):
        mean, var = stats[i]
        run_mean, run_var = layer.running_mean.float(), layer.running_var.float()
        rows.append({
            "layer": i + 1,
            "group": group,
            "channels": int(run_mean.numel()),
            "mean shift (stored σ)": float(((mean - run_mean).abs() / (run_var + layer.eps).sqrt()).mean()),
            "variance ratio (median)": float((var / (run_var + layer.eps)).median()),
        })
    return pd.DataFrame(rows).set_index("layer")


# -- reference runs committed to results/ ----------------------------------------------------------------------


def read_records(folder) -> tuple[list[dict], list[str]]:
    """Every run record (JSON) under `folder`, recursively, and the names of files that are not records.

    A missing folder gives no records. A record is a JSON object with config, metrics and machine.
    """
    import json
    from pathlib import Path

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
            row[base_column] = ", ".join(f"s{seed} {_points(d)}" for seed, d in deltas.items()) or "–"
        rows.append(row)
    columns = ["recipe", "backbone", "profile", "machine", "data", "input", "test images", "subsets (seeds)",
               "test accuracy", "validation accuracy", "minutes per run", "this build's test accuracy"]
    if own is None:
        columns.remove("this build's test accuracy")
    if base is not None:
        columns.append(base_column)
    return pd.DataFrame(rows, columns=columns)
