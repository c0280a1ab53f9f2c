"""The trainer: one loop for every recipe, stage by stage, with a per-epoch history.

Batches come from uint8 tensors already on the device; `augment` turns them into model input.
A stage that trains only the head on a frozen body, with no augmentation, trains on features
computed once (a linear probe is then seconds, whatever the backbone).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import augment, resume
from .backbones import Classifier
from .errors import UserError
from .metrics import label_metrics
from .recipes import Recipe, Stage
from .resume import StateFile


def tune_cpu_allocator() -> None:
    """Keep glibc from returning large blocks to the OS after every batch.

    PyTorch's CPU activations are tens of MB; by default glibc maps and unmaps them on each
    allocation, and the page faults cost as much as the convolutions (measured: about 1.5x the
    images/s on 2 cores with this). Harmless elsewhere; a no-op where glibc is absent.
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED:
        return
    _ALLOCATOR_TUNED = True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: the largest it may be
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
        libc.mallopt(-2, 256 << 20)  # M_TOP_PAD
    except (OSError, AttributeError):
        pass


_ALLOCATOR_TUNED = False


def eval_batch_size(device: torch.device) -> int:
    # Small batches stay in the CPU's caches; a GPU wants large ones.
    return 256 if device.type == "cuda" else 32


def pick_device(device: str | None = None) -> torch.device:
    """`device`, checked, or the GPU when there is one."""
    if not device:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} asked for, but PyTorch sees no CUDA GPU here; use --device cpu")
    if chosen.type not in ("cpu", "cuda"):
        raise UserError(f"device {device!r} is not supported; use cpu, cuda or cuda:N")
    return chosen


def place_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Move `model` to `device` in channels-last layout (faster for these convnets, GPU and CPU)."""
    if device.type == "cpu":
        tune_cpu_allocator()
    return model.to(device, memory_format=torch.channels_last)


PRECISIONS = ("auto", "bf16", "fp32")


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bf16 in hardware (AVX-512 BF16 or AMX), read from its feature flags.

    Without them PyTorch emulates bf16 on the CPU, which is far slower than fp32 (measured on a 2-core
    AVX2 AMD EPYC: EfficientNet-Lite0 inference 2.8 images/s in bf16 against 19 in fp32), so the
    vendor or the core count says nothing: only the flags do. Linux only; elsewhere False (fp32).
    """
    try:
        with open(cpuinfo) as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_native_bf16()


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto" becomes "bf16" where the device runs bf16 natively, else "fp32"; the others stay as asked."""
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def autocast(device: torch.device, precision: str = "auto"):
    """bf16 mixed precision (autocast) when `precision` resolves to "bf16"; plain fp32 otherwise."""
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


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


def _augments(stage: Stage, recipe: Recipe) -> bool:
    mixing = recipe.mixup_alpha > 0 or recipe.cutmix_alpha > 0
    return stage.augment and (recipe.augment != "none" or mixing)


def _uses_features(model: Classifier, stage: Stage, recipe: Recipe) -> bool:
    """A stage that trains only the head, on unaugmented images, can train on cached features."""
    return trainable_groups(model, stage) == ["head"] and not _augments(stage, recipe) and stage.frozen_bn == "eval"


@torch.inference_mode()
def compute_outputs(model, images, size, batch_size, device, features=False, progress=False, desc="evaluating",
                    tta="none", precision: str = "fp32", plain_too: bool = False):
    """The model's logits (or the body's pooled features) for uint8 images, as float32 on the CPU.

    With test-time augmentation, the softmax probabilities of the views are averaged and their log
    is returned in place of logits (argmax and cross-entropy then apply to the averaged prediction).
    `plain_too` also returns the logits of the first view, the images as they are: the prediction
    without test-time augmentation, from the same pass.
    """
    if device.type == "cpu":
        tune_cpu_allocator()
    was_training = model.training
    model.eval()
    net = model.body if features else model
    outputs, plain = [], []
    for start in tqdm(range(0, len(images), batch_size), desc=desc, disable=not progress, leave=False):
        batch = images[start : start + batch_size].to(device, non_blocking=True)
        x = augment.prepare(batch, size, model.mean, model.std)
        x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            if features or tta == "none":
                outputs.append(net(x).float().cpu())
                plain.append(outputs[-1])
            else:
                view_logits = [net(v).float() for v in augment.tta_views(x, tta)]
                probs = sum(logits.softmax(1) for logits in view_logits) / len(view_logits)
                outputs.append(probs.clamp_min(1e-12).log().cpu())
                plain.append(view_logits[0].cpu())
    model.train(was_training)
    joined = torch.cat(outputs) if outputs else torch.empty(0)
    if plain_too:
        return joined, torch.cat(plain) if plain else torch.empty(0)
    return joined


def classification_metrics(logits: torch.Tensor, labels: np.ndarray, n_classes: int) -> dict:
    """Accuracy, loss, per-class accuracy and the confusion matrix (scikit-learn's), and the predictions."""
    predictions = logits.argmax(1).numpy()
    labels = np.asarray(labels)
    counted = label_metrics(labels, predictions, n_classes)
    return {
        "accuracy": counted["accuracy"],
        "loss": float(F.cross_entropy(logits, torch.as_tensor(labels)).item()),
        "per_class_accuracy": counted["per_class_accuracy"],
        "confusion_matrix": counted["confusion_matrix"],
        "predictions": predictions.tolist(),
    }


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


def set_learning_rates(optimizer: torch.optim.Optimizer, factor: float, at_start: dict[str, float]) -> None:
    """Every parameter group at its base rate times the schedule's `factor`; `at_start` keeps each layer
    group's first rate of the epoch (for the history)."""
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
        at_start.setdefault(group["group"], group["lr"])


def finish_training(model: Classifier, ema, start_weights, result: TrainResult, state: StateFile | None,
                    generator, rng, call_started: float, extra: Callable[[dict], dict] = lambda s: s) -> None:
    """The end of a training call: the averaged weights become the model's, its distance from the start is
    measured, and the finished state is saved (`extra` may add to it)."""
    if ema is not None:  # the averaged weights (and BatchNorm statistics) become the model's
        model.load_state_dict(ema.module.state_dict())
    model.eval()
    result.distance_from_pretrained = distance_from_start(model, start_weights)
    if state is not None:
        state.save(extra(_state(model, None, None, generator, rng, result, None, call_started)))


def _stage_steps(n: int, recipe: Recipe, stage: Stage) -> tuple[int, int, int, int]:
    batch_size = min(recipe.batch_size, n)
    steps_per_epoch = n // batch_size  # drop the ragged last batch: BatchNorm needs full batches
    return batch_size, steps_per_epoch, steps_per_epoch * stage.epochs, round(stage.warmup_epochs * steps_per_epoch)


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
) -> TrainResult:
    """Train `model` through `stages`; x_* are uint8 (N, H, W, 3) tensors, y_* int64 labels.

    `precision` is "bf16" (autocast: matrix products and convolutions in bf16, weights, optimizer and
    loss in fp32) or "fp32"; see `resolve_precision`. With `state`, everything the next epoch depends on
    is saved there after every epoch, and a call that finds a saved state resumes from it (or, if that
    call had finished, returns its final model and result at once)."""
    call_started = time.perf_counter()
    place_model(model, device)
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)  # λ and boxes of MixUp/CutMix
    n_classes = model.head.out_features
    start_weights = weights_of(model)
    ema = make_ema(model, recipe)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    result = TrainResult()
    saved, finished = resume_from(state, device, model, ema, generator, rng, result, stages)
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

        augmenting = _augments(stage, recipe)
        augmentation = recipe.augment if augmenting else "none"
        mixing = augmenting and (recipe.mixup_alpha > 0 or recipe.cutmix_alpha > 0)
        n = len(train_in)
        batch_size, steps_per_epoch, total_steps, warmup_steps = _stage_steps(n, recipe, stage)
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
                state.save(_state(model, optimizer, ema, generator, rng, result, stage_index, call_started))
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


def _state(model, optimizer, ema, generator, rng, result: TrainResult, stage_index: int | None,
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
