"""Recipes explained from recipes.py itself: how two recipes differ, and every layer group's learning rate
at every step, replayed as the trainer sets it."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd

from .recipes import Stage, get_recipe, scaled_stages
from .train import group_learning_rates, lr_factor


def _stage_summary(stage: dict) -> str:
    """A stage in one line: only what differs from a plain, all-layers, constant-rate stage."""
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
        if key in ("name", "description", "stages", "builds_on", "chapter"):  # what it is, not how it trains
            continue
        if key == "self_training":  # in one line, and setting by setting (the student's stages in one line each)
            student = [f"student stage {i}: {_stage_summary(stage)}" for i, stage in enumerate(value["stages"], 1)]
            settings["self-training"] = "; ".join(
                [f"{name} {setting}" for name, setting in value.items() if name != "stages"] + student)
            for name, setting in value.items():
                if name != "stages":
                    settings[f"self-training · {name}"] = "–" if setting is None else str(setting)
            for i, line in enumerate(student, 1):
                settings[f"self-training · student stage {i}"] = line.split(": ", 1)[1]
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
    Self-training likewise: setting by setting when both recipes have it, in one line when only one has.
    """
    a, b = _flat_settings(get_recipe(base)), _flat_settings(get_recipe(new))
    shared_stages = min(len(get_recipe(base).stages), len(get_recipe(new).stages))
    both_self_train = "self-training" in a and "self-training" in b
    rows = []
    for key in dict.fromkeys([*a, *b]):
        if key.startswith("self-training") and both_self_train == (key == "self-training"):
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
