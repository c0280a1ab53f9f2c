"""The trainer: one loop for every recipe, stage by stage, with a per-epoch history, resumable per epoch.

Batches come from uint8 tensors already on the device; `augment` turns them into model input.
A stage that trains only the head on a frozen body, with no augmentation, trains on features
computed once (a linear probe is then seconds, whatever the backbone).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from cifar_tl.core import resume
from cifar_tl.core.device import autocast, eval_batch_size, place_model
from cifar_tl.core.metrics import classification_metrics
from cifar_tl.core.resume import StateFile
from cifar_tl.data import augment
from cifar_tl.models.backbones import Classifier
from cifar_tl.training.evaluate import compute_outputs
from cifar_tl.training.recipes import Recipe, Stage
from cifar_tl.training.schedule import (lr_factor, make_optimizer, set_learning_rates, set_trainable, stage_steps,
                                        trainable_groups)


def make_batch(images: torch.Tensor, index: torch.Tensor, model: Classifier, image_size: int, augmentation: str,
               generator: torch.Generator | None) -> torch.Tensor:
    """Model input for `images[index]`: uint8 on the device in, normalised float NCHW out."""
    batch = images[index]
    if batch.ndim == 2:  # cached features: nothing to prepare
        return batch
    if augmentation in augment.AUGMENTERS:  # "crop_flip", "strong"
        x = augment.AUGMENTERS[augmentation](batch, image_size, model.mean, model.std, generator)
    else:
        x = augment.prepare(batch, image_size, model.mean, model.std)
    return x.contiguous(memory_format=torch.channels_last)


def training_step(net: nn.Module, x: torch.Tensor, targets: torch.Tensor, optimizer, loss_fn, device,
                  precision: str = "fp32"):
    """Forward, backward and optimizer step; returns the loss and the logits (not synchronised).

    `targets` are class indices, or probabilities (N, classes) after MixUp/CutMix.
    """
    with autocast(device, precision):
        logits = net(x)
        loss = loss_fn(logits.float(), targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss, logits


def ema_decay_at(decay: float, t: int) -> float:
    """The decay of the weights' moving average at update t (the first update, t = 0, copies).

    The usual warm-up, min(decay, (1 + t) / (10 + t)): with a fixed decay a short run's average would
    still hold much of the untrained head it started from (0.99 over 60 steps keeps 55%).
    """
    return min(decay, (1 + t) / (10 + t))


def ema_update(decay: float, updates: Callable[[], int]):
    """The update an `AveragedModel` applies for an exponential moving average with `ema_decay_at`.

    `updates()` gives t. It reads the AveragedModel's own counter, which stays on the CPU: the copy of it
    that the update is handed lives on the GPU, and reading that would wait for the GPU every step.
    """

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], _n_averaged: torch.Tensor) -> None:
        d = ema_decay_at(decay, updates())
        if torch.is_floating_point(averaged[0]):
            torch._foreach_lerp_(averaged, current, 1 - d)
        else:  # integer buffers (BatchNorm's batch counters) are counts, not weights: keep the latest
            for a, c in zip(averaged, current, strict=True):
                a.copy_(c)

    return update


def make_ema(model: nn.Module, recipe: Recipe):
    """The moving average of `model`'s weights (and buffers) that `recipe.ema_decay` asks for, or None."""
    if recipe.ema_decay <= 0:
        return None
    from torch.optim.swa_utils import AveragedModel

    ema = AveragedModel(model, use_buffers=True)
    ema.multi_avg_fn = ema_update(recipe.ema_decay, lambda: int(ema.n_averaged))
    return ema


def stage_augments(stage: Stage, recipe: Recipe) -> bool:
    mixing = recipe.mixup_alpha > 0 or recipe.cutmix_alpha > 0
    return stage.augment and (recipe.augment != "none" or mixing)


def _uses_features(model: Classifier, stage: Stage, recipe: Recipe) -> bool:
    """A stage that trains only the head, on unaugmented images, can train on cached features."""
    return trainable_groups(model, stage) == ["head"] and not stage_augments(stage, recipe) and stage.frozen_bn == "eval"


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0
    images_trained: int = 0  # images that went through a training step
    feature_seconds: float = 0.0
    features: tuple[torch.Tensor, torch.Tensor] | None = None  # (train, val) features the last head-only stage used
    resumed_at_epochs: list[int] = field(default_factory=list)  # epochs finished when an interrupted run resumed
    earlier_seconds: float = 0.0  # time this training spent in earlier processes, up to their last saved epoch
    distance_from_pretrained: dict[str, float] | None = None  # each group's, for the final weights


def distance_from_start(model: Classifier, start: dict[str, list[torch.Tensor]]) -> dict[str, float]:
    """Each layer group's relative distance from the weights it started with, ||w - w0|| / ||w0||
    over all the group's parameters: how far training moved it (for the head, from its random start)."""
    distances = {}
    with torch.no_grad():
        for name in model.group_names():
            moved = sum(float((p.float() - p0).pow(2).sum()) for p, p0 in zip(model.group_parameters(name), start[name]))
            size = sum(float(p0.pow(2).sum()) for p0 in start[name])
            distances[name] = round(math.sqrt(moved / size), 6) if size else 0.0
    return distances


def weights_of(model: Classifier) -> dict[str, list[torch.Tensor]]:
    """A copy of each layer group's parameters: where `distance_from_start` measures from."""
    return {name: [p.detach().float().clone() for p in model.group_parameters(name)] for name in model.group_names()}


def loop_setup(model: Classifier, recipe: Recipe, stages, seed: int, device, state: StateFile | None,
               result: TrainResult, start_weights: dict[str, list[torch.Tensor]] | None = None):
    """What every training loop starts with: the model on the device, its random streams (batches and
    augmentation; λ and boxes of MixUp/CutMix), the weights it starts from (to measure how far they move), its
    EMA and loss; and, from `state`, where an interrupted call left off (`resume_from`)."""
    place_model(model, device)
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    start_weights = {name: [p.to(device) for p in params]
                     for name, params in (start_weights or weights_of(model)).items()}
    ema = make_ema(model, recipe)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    saved, finished = resume_from(state, device, model, ema, generator, rng, result, stages)
    return generator, rng, start_weights, ema, loss_fn, saved, finished


def resume_from(state: StateFile | None, device, model: Classifier, ema, generator: torch.Generator,
                rng: np.random.Generator, result: TrainResult, stages: tuple[Stage, ...]) -> tuple[dict | None, bool]:
    """Pick a training call up where `state` left it: the weights, their average, the generators and the result
    so far. Returns (the saved state, whose optimizer `resume_stage` restores; None when there was none) and
    whether that call had finished, in which case `model` now holds its final weights."""
    saved = state.load(device) if state is not None else None
    if saved is None:
        return None, False
    model.load_state_dict(saved["model"])
    _restore_result(result, saved)
    resume.restore_rng_states(saved["rng"], generator, rng)
    if saved["finished"]:
        if stages:
            set_trainable(model, stages[-1])  # which weights are trainable, as the last stage left them
        model.eval()
        return None, True
    result.resumed_at_epochs.append(len(result.history))
    if ema is not None:
        ema.load_state_dict(saved["ema"])
    return saved, False


def epochs_done(result: TrainResult, stage_index: int) -> int:
    """Epochs of stage `stage_index` (0-based) that the result's history already holds (a resumed call's)."""
    return sum(1 for h in result.history if h["stage"] == stage_index + 1)


def finish_training(model: Classifier, ema, start_weights, result: TrainResult, state: StateFile | None,
                    generator, rng, call_started: float, extra: Callable[[dict], dict] = lambda s: s) -> None:
    """The end of a training call: the averaged weights become the model's, its distance from the start is
    measured, and the finished state is saved (`extra` may add to it)."""
    if ema is not None:  # the averaged weights (and BatchNorm statistics) become the model's
        model.load_state_dict(ema.module.state_dict())
    model.eval()
    result.distance_from_pretrained = distance_from_start(model, start_weights)
    if state is not None:
        state.save(extra(saved_state(model, None, None, generator, rng, result, None, call_started)))


def train(
    model: Classifier,
    recipe: Recipe,
    stages: tuple[Stage, ...],
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    image_size: int,
    device: torch.device,
    seed: int,
    progress: bool = True,
    precision: str = "fp32",
    state: StateFile | None = None,
    start_weights: dict[str, list[torch.Tensor]] | None = None,
) -> TrainResult:
    """Train `model` through `stages`; x_* are uint8 (N, H, W, 3) tensors, y_* int64 labels.
    `start_weights` (`weights_of`) is where each group's distance is measured from: the model's own weights
    when not given, which are the pretrained ones unless the model was trained before.

    `precision` is "bf16" (autocast: matrix products and convolutions in bf16, weights, optimizer and
    loss in fp32) or "fp32"; see `resolve_precision`. With `state`, everything the next epoch depends on
    is saved there after every epoch, and a call that finds a saved state resumes from it (or, if that
    call had finished, returns its final model and result at once)."""
    call_started = time.perf_counter()
    n_classes = model.head.out_features
    result = TrainResult()
    generator, rng, start_weights, ema, loss_fn, saved, finished = loop_setup(model, recipe, stages, seed, device,
                                                                               state, result, start_weights)
    if finished:  # this training had finished: its final model and result
        return result
    x_train, y_train = x_train.to(device), y_train.to(device)
    x_val, y_val = x_val.to(device), y_val.to(device)
    eval_bs = eval_batch_size(device)
    epoch = 0
    for stage_index, stage in enumerate(stages):
        done_here = epochs_done(result, stage_index)
        if saved is not None and done_here == stage.epochs:  # a stage the interrupted run had finished
            epoch += stage.epochs
            continue
        groups = set_trainable(model, stage)
        use_features = _uses_features(model, stage, recipe)
        optimizer = make_optimizer(model, stage, recipe, groups)
        if saved is not None and saved["stage"] == stage_index:  # resume inside this stage: its optimizer too
            optimizer.load_state_dict(saved["optimizer"])
        saved = None
        if use_features:
            started = time.perf_counter()
            train_in = compute_outputs(model, x_train, image_size, eval_bs, device, True, progress, "features (train)",
                                       precision=precision)
            val_in = compute_outputs(model, x_val, image_size, eval_bs, device, True, progress, "features (val)",
                                     precision=precision)
            result.features = (train_in, val_in)
            train_in, val_in = train_in.to(device), val_in.to(device)
            result.feature_seconds += time.perf_counter() - started
            net = model.head
        else:
            train_in, val_in, net = x_train, x_val, model

        augmenting = stage_augments(stage, recipe)
        augmentation = recipe.augment if augmenting else "none"
        mixing = augmenting and (recipe.mixup_alpha > 0 or recipe.cutmix_alpha > 0)
        n = len(train_in)
        batch_size, steps_per_epoch, total_steps, warmup_steps = stage_steps(n, recipe, stage)
        step = done_here * steps_per_epoch
        epoch += done_here
        bar = tqdm(range(done_here, stage.epochs), desc=f"stage {stage_index + 1}/{len(stages)}", disable=not progress,
                   initial=done_here, total=stage.epochs)
        for _ in bar:
            lrs_at_start = {}
            order = torch.randperm(n, generator=generator).to(device)
            loss_sum = torch.zeros((), device=device)  # summed on the device: no sync per step
            correct = torch.zeros((), device=device, dtype=torch.long)
            seen = 0
            started = time.perf_counter()
            for b in range(steps_per_epoch):
                index = order[b * batch_size : (b + 1) * batch_size]
                set_learning_rates(optimizer, lr_factor(stage.schedule, step, total_steps, warmup_steps), lrs_at_start)
                targets = y_train[index]
                x = make_batch(train_in, index, model, image_size, augmentation, generator)
                if mixing:
                    x, soft = augment.mix_batch(x, targets, n_classes, recipe.mixup_alpha, recipe.cutmix_alpha,
                                                rng, generator)
                    loss, logits = training_step(net, x, soft, optimizer, loss_fn, device, precision)
                    targets = soft.argmax(1)  # the dominant class, for the training accuracy
                else:
                    loss, logits = training_step(net, x, targets, optimizer, loss_fn, device, precision)
                if ema is not None:
                    ema.update_parameters(model)
                step += 1
                loss_sum += loss.detach() * len(index)
                correct += (logits.argmax(1) == targets).sum()
                seen += len(index)
            if device.type == "cuda":
                torch.cuda.synchronize()
            result.train_seconds += time.perf_counter() - started
            if not use_features:
                result.images_trained += seen
            if use_features:
                with torch.inference_mode():
                    val_logits = model.head(val_in).float().cpu()
            else:
                val_logits = compute_outputs(model, x_val, image_size, eval_bs, device, precision=precision)
                set_trainable(model, stage)  # compute_outputs restored train mode: re-freeze BatchNorm
            val = classification_metrics(val_logits, y_val.cpu().numpy(), model.head.out_features)
            epoch += 1
            record = epoch_record(epoch, stage_index, loss_sum, correct, seen, val, lrs_at_start, model, start_weights)
            result.history.append(record)
            bar.set_postfix(train=f"{record['train_accuracy']:.3f}", val=f"{record['val_accuracy']:.3f}")
            if state is not None:
                state.save(saved_state(model, optimizer, ema, generator, rng, result, stage_index, call_started))
    finish_training(model, ema, start_weights, result, state, generator, rng, call_started)
    return result


def epoch_record(epoch: int, stage_index: int, loss_sum: torch.Tensor, correct: torch.Tensor, seen: int, val: dict,
                 lrs: dict, model: Classifier, start_weights: dict) -> dict:
    """One epoch's entry of a run's history: training loss and accuracy (summed on the device over `seen`
    images), validation, the learning rates it started with, and each group's distance from the start."""
    return {
        "epoch": epoch,
        "stage": stage_index + 1,
        "train_loss": loss_sum.item() / max(seen, 1),
        "train_accuracy": correct.item() / max(seen, 1),
        "val_loss": val["loss"],
        "val_accuracy": val["accuracy"],
        "lr": lrs,
        "distance_from_pretrained": distance_from_start(model, start_weights),
    }


def saved_state(model, optimizer, ema, generator, rng, result: TrainResult, stage_index: int | None,
           call_started: float) -> dict:
    """What `train` saves after an epoch of stage `stage_index` (None: at its end, with the final weights
    and no optimizer)."""
    finished = stage_index is None
    return {
        "finished": finished,
        "stage": stage_index,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "ema": ema.state_dict() if ema is not None else None,
        "rng": resume.rng_states(generator, rng),
        "result": {"history": result.history, "train_seconds": result.train_seconds,
                   "images_trained": result.images_trained, "feature_seconds": result.feature_seconds,
                   "resumed_at_epochs": result.resumed_at_epochs,
                   "earlier_seconds": result.earlier_seconds + time.perf_counter() - call_started,
                   "distance_from_pretrained": result.distance_from_pretrained},
        "features": result.features if finished else None,  # scikit-learn's probe refits on them
    }


def _restore_result(result: TrainResult, saved: dict) -> None:
    for name, value in saved["result"].items():
        setattr(result, name, value)
    if saved.get("features") is not None:
        result.features = tuple(f.cpu() for f in saved["features"])
