"""What trains and how fast: the groups a stage unfreezes, their learning rates (discriminative decay), the
optimiser, and the learning-rate schedule (warm-up, then constant or cosine) over a stage's steps."""

from __future__ import annotations

import math

import torch
from torch import nn

from cifar_tl.models.backbones import Classifier
from cifar_tl.training.recipes import Recipe, Stage


def lr_factor(schedule: str, step: int, total_steps: int, warmup_steps: int = 0) -> float:
    """Multiplier of the base learning rate at optimizer step `step` (0-based) of `total_steps`.

    Linear warm-up from 1/(warmup_steps+1) to 1 over `warmup_steps`, then constant or a cosine from
    1 down to 0 at the last step.
    """
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if schedule == "constant":
        return 1.0
    span = max(1, total_steps - warmup_steps - 1)
    progress = min(1.0, (step - warmup_steps) / span)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def trainable_groups(model: Classifier, stage: Stage) -> list[str]:
    names = model.group_names()
    if stage.train == "all":
        return names
    if stage.train == "head":
        return ["head"]
    k = int(stage.train)
    if not 1 <= k <= len(names):
        raise ValueError(f"stage trains {k} groups but {model.name} has {len(names)}")
    return names[-k:]


def group_learning_rates(model: Classifier, stage: Stage) -> dict[str, float]:
    """Each trainable group's base learning rate: the head's `lr`, times `lr_decay` per group below it."""
    names = model.group_names()
    chosen = trainable_groups(model, stage)
    return {name: stage.lr * stage.lr_decay ** (len(names) - 1 - names.index(name)) for name in chosen}


def set_trainable(model: Classifier, stage: Stage) -> list[str]:
    """Freeze every group the stage does not train, and set train/eval modes (BatchNorm included)."""
    chosen = set(trainable_groups(model, stage))
    model.train()
    for name, modules in model.layer_groups():
        for module in modules:
            module.requires_grad_(name in chosen)
            if name not in chosen and stage.frozen_bn == "eval":
                module.eval()  # statistics and dropout of frozen groups stay fixed
            if name in chosen and stage.trainable_bn == "eval":
                for sub in module.modules():
                    if isinstance(sub, nn.modules.batchnorm._BatchNorm):
                        sub.eval()
    return [n for n in model.group_names() if n in chosen]


def make_optimizer(model: Classifier, stage: Stage, recipe: Recipe, groups: list[str]) -> torch.optim.Optimizer:
    """One parameter group per (layer group, decay or not): weight decay only on weights, not on
    biases and BatchNorm parameters; each carries its base learning rate for the schedule."""
    base_lrs = group_learning_rates(model, stage)
    param_groups = []
    for name in groups:
        params = model.group_parameters(name)
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]
        for subset, wd in ((decay, recipe.weight_decay), (no_decay, 0.0)):
            if subset:
                param_groups.append({"params": subset, "lr": base_lrs[name], "base_lr": base_lrs[name],
                                     "weight_decay": wd, "group": name})
    if stage.optimizer == "sgd":
        return torch.optim.SGD(param_groups, momentum=stage.momentum, nesterov=True)
    return torch.optim.AdamW(param_groups)


def set_learning_rates(optimizer: torch.optim.Optimizer, factor: float, at_start: dict[str, float]) -> None:
    """Every parameter group at its base rate times the schedule's `factor`; `at_start` keeps each layer
    group's first rate of the epoch (for the history)."""
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
        at_start.setdefault(group["group"], group["lr"])


def stage_steps(n: int, recipe: Recipe, stage: Stage) -> tuple[int, int, int, int]:
    batch_size = min(recipe.batch_size, n)
    steps_per_epoch = n // batch_size  # drop the ragged last batch: BatchNorm needs full batches
    return batch_size, steps_per_epoch, steps_per_epoch * stage.epochs, round(stage.warmup_epochs * steps_per_epoch)
