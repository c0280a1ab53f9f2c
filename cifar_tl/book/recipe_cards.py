"""Recipes explained from recipes.py itself: how two recipes differ, and every layer group's learning rate
at every step, replayed as the trainer sets it."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd

from cifar_tl.training.loop import stage_augments
from cifar_tl.training.profiles import scaled_stages
from cifar_tl.training.recipes import DESCRIPTIVE_FIELDS, Stage, get_recipe
from cifar_tl.training.schedule import group_learning_rates, lr_factor


def _stage_summary(stage: dict) -> str:
    """A stage in one line: only what differs from a plain, all-layers, constant-rate stage."""
    defaults = Stage(epochs=1, lr=1.0).__dict__
    trains = {"all": "every group", "head": "the head"}.get(stage["train"], f"the top {stage['train']} groups")
    parts = [f"{stage['epochs']} epochs", f"lr {stage['lr']:g}", f"trains {trains}"]
    for key in ("lr_decay", "schedule", "warmup_epochs", "optimizer", "frozen_bn", "trainable_bn", "augment"):
        if stage[key] != defaults[key]:
            parts.append(f"{key} {stage[key]}")
    return ", ".join(parts)


# The ways of using the unlabelled pool: the recipe field, its label in a table, and what its stages are called.
_UNLABELLED = {"self_training": ("self-training", "student stage"), "consistency": ("consistency", "stage")}


def _flat_settings(recipe) -> dict[str, str]:
    settings = {}
    for key, value in recipe.as_dict().items():
        if key in (*DESCRIPTIVE_FIELDS, "stages"):  # what it is, not how it trains (stages: below)
            continue
        if key in _UNLABELLED:  # in one line, and setting by setting (their stages in one line each)
            label, stage_label = _UNLABELLED[key]
            student = [f"{stage_label} {i}: {_stage_summary(stage)}" for i, stage in enumerate(value["stages"], 1)]
            settings[label] = "; ".join(
                [f"{name} {setting}" for name, setting in value.items() if name != "stages"] + student)
            for name, setting in value.items():
                if name != "stages":
                    settings[f"{label} · {name}"] = "–" if setting is None else str(setting)
            for i, line in enumerate(student, 1):
                settings[f"{label} · {stage_label} {i}"] = line.split(": ", 1)[1]
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
    Self-training and consistency training likewise: setting by setting when both recipes have it, in one line
    when only one has.
    """
    a, b = _flat_settings(get_recipe(base)), _flat_settings(get_recipe(new))
    shared_stages = min(len(get_recipe(base).stages), len(get_recipe(new).stages))
    rows = []
    for key in dict.fromkeys([*a, *b]):
        label = next((label for label, _ in _UNLABELLED.values() if key.startswith(label)), None)
        if label is not None and (label in a and label in b) == (key == label):
            continue  # the one-line summary, or its settings one by one: not both
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


def _trains(train) -> str:
    return {"all": "every layer group", "head": "the head only"}.get(train, f"the top {train} groups and the head")


def _bn_mode(mode: str) -> str:
    return {"train": "updated from each batch", "eval": "frozen at their ImageNet values"}.get(mode, mode)


def recipe_card(name: str = "full", image_size: int | None = None) -> pd.DataFrame:
    """Every setting of recipe `name`, stage by stage, read from recipes.py: one column per training stage and
    one for evaluation (the weight average and the test-time views). Recipe-wide settings (weight decay,
    label smoothing, batch size, augmentation) appear in each stage they act in; `image_size` is the input
    side when the recipe does not fix its own (the profile's)."""
    recipe = get_recipe(name)
    size = recipe.image_size or image_size
    columns = {}
    for index, stage in enumerate(recipe.stages, 1):
        augmenting = stage_augments(stage, recipe)  # as the trainer decides it
        schedule = stage.schedule + (f", {stage.warmup_epochs:g} epoch{'s' * (stage.warmup_epochs != 1)} of linear "
                                     "warm-up first" if stage.warmup_epochs else "")
        per_group = ("– (only the head trains)" if stage.train == "head" else "the same as the head's"
                     if stage.lr_decay == 1 else f"×{stage.lr_decay:g} for each group further below the head")
        title = f"stage {index}: " + ("linear probe" if stage.train == "head" else "fine-tuning")
        columns[title] = {
            "trains": _trains(stage.train),
            "epochs": str(stage.epochs),
            "optimizer": stage.optimizer + (f" (momentum {stage.momentum:g})" if stage.optimizer == "sgd" else ""),
            "peak learning rate (head)": f"{stage.lr:g}",
            "learning rate of the groups below": per_group,
            "schedule": schedule,
            "weight decay": f"{recipe.weight_decay:g}" if recipe.weight_decay else "none",
            "label smoothing": f"{recipe.label_smoothing:g}" if recipe.label_smoothing else "none",
            "batch size": str(recipe.batch_size),
            "input": f"{size}×{size}" if size else "the profile's",
            "augmentation": recipe.augment if augmenting and recipe.augment != "none" else "none",
            "MixUp α / CutMix α": (f"{recipe.mixup_alpha:g} / {recipe.cutmix_alpha:g}"
                                   + (", one of them per batch" if recipe.mixup_alpha and recipe.cutmix_alpha else "")
                                   if augmenting and (recipe.mixup_alpha or recipe.cutmix_alpha) else "none"),
            "BatchNorm statistics of trained groups": _bn_mode(stage.trainable_bn) if stage.train != "head" else "–",
            "BatchNorm statistics of frozen groups": _bn_mode(stage.frozen_bn) if stage.train != "all" else "–",
            "features": ("computed once (frozen backbone)" if stage.train == "head" and not augmenting
                         and stage.frozen_bn == "eval" else "recomputed every step"),
        }
    evaluation = {key: "–" for key in next(iter(columns.values()))}
    evaluation.update({
        "input": f"{size}×{size}" if size else "the profile's",
        "weights evaluated": (f"an exponential moving average of every update, decay min({recipe.ema_decay:g}, "
                              "(1+t)/(10+t)) at update t" if recipe.ema_decay else "the last ones"),
        "test-time views": {"none": "the image as it is", "flip": "the image and its mirror, probabilities averaged",
                            "flip_shift": "the image, its mirror and four shifts, probabilities averaged"}[recipe.tta],
    })
    columns["evaluation"] = evaluation
    table = pd.DataFrame(columns).fillna("–")
    table.index.name = "setting"
    return table


def ema_summary(record: dict) -> dict | None:
    """What a record's exponential moving average of the weights really averaged, replayed from the decay rule
    (`loop.ema_decay_at`) over the run's updates, which its history (epochs as run) and batch size give.

    Returns None for a run without an average. Keys: `decay` (the recipe's cap), `updates`, `steps_per_epoch`,
    `final_decay` (at the last update), `cap_update` (the first update at which the warm-up reaches the cap) and
    `reaches_cap`, `window` (1 / (1 - final decay), the updates the average roughly remembers at the end),
    `stage_shares` (the weight of each stage's updates in the final average), `last_epoch_share`, and
    `half_updates` (the fewest last updates that hold half of the average's weight)."""
    import math

    from cifar_tl.training.loop import ema_decay_at

    recipe = record["recipe"]
    decay = recipe.get("ema_decay") or 0.0
    if decay <= 0:
        return None
    train_images = record["data"]["counts"]["train"]
    steps = train_images // min(recipe["batch_size"], train_images)  # the ragged last batch is dropped
    stages = [h["stage"] for h in record["history"]]
    updates = len(stages) * steps
    d = np.array([0.0] + [ema_decay_at(decay, t) for t in range(1, updates)])  # update 0 copies
    after = np.append(np.cumprod(d[::-1])[::-1][1:], 1.0)  # the product of the decays after each update
    weights = (1 - d) * after  # each update's weights' share of the final average (they sum to 1)
    per_stage = [sum(1 for s in stages if s == stage) * steps for stage in sorted(set(stages))]
    bounds = np.cumsum([0, *per_stage])
    tail = np.cumsum(weights[::-1])
    cap_update = math.ceil((10 * decay - 1) / (1 - decay)) if decay < 1 else None
    return {
        "decay": decay,
        "updates": updates,
        "steps_per_epoch": steps,
        "final_decay": float(d[-1]),
        "cap_update": cap_update,
        "reaches_cap": cap_update is not None and updates - 1 >= cap_update,
        "window": 1 / (1 - float(d[-1])),
        "stage_shares": [float(weights[a:b].sum()) for a, b in zip(bounds, bounds[1:])],
        "last_epoch_share": float(weights[-steps:].sum()),
        "half_updates": int(np.searchsorted(tail, 0.5) + 1),
    }


def fmt_share(share: float) -> str:
    """A share as a percentage that never rounds a small, non-zero share to "0%"."""
    if share <= 0:
        return "none"
    if share < 0.001:
        return "less than 0.1%"
    return f"{100 * share:.1f}%" if share < 0.1 else f"{100 * share:.0f}%"
