"""Consistency training on unlabelled images (FixMatch: Sohn et al., 2020): one job, its training loop.

The recipe's own labels-only stages have trained the model this starts from. Each step of a
`Consistency` stage takes a labelled batch (cross-entropy, as `loop.train` would compute it) and
`unlabelled_ratio` times as many pool images. The model's prediction on a weak view of each pool image,
without gradient, gives a pseudo-label and its confidence; a strong view of the same image learns that
pseudo-label where the confidence reaches the threshold. The unlabelled loss is averaged over every pool
image of the batch (those below the threshold count as zero, as in FixMatch) and weighted by `weight`.
The labelled batch and both views go through the model in one forward pass, so where BatchNorm trains,
its batch statistics are taken over all of them (as FixMatch's own implementation does). An epoch is one
pass over the labelled images; each epoch draws its pool images afresh, without replacement while the
pool lasts.

The loop receives the pool's IMAGES only: it cannot use the pool's labels, because it is never given
them. `diagnostics` reads those withheld labels afterwards, to tell the reader how right the last epoch's
pseudo-labels were; nothing it computes goes back into training.

Training state is saved and resumed exactly as `loop.train` does it (its `StateFile`, after every epoch).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from cifar_tl.core.device import autocast, eval_batch_size
from cifar_tl.core.errors import UserError
from cifar_tl.core.metrics import classification_metrics
from cifar_tl.core.resume import StateFile
from cifar_tl.data import augment
from cifar_tl.models.backbones import Classifier
from cifar_tl.training.evaluate import compute_outputs
from cifar_tl.training.loop import (TrainResult, epoch_record, epochs_done, finish_training, loop_setup, make_batch,
                                    saved_state, stage_augments)
from cifar_tl.training.recipes import Consistency, Recipe
from cifar_tl.training.schedule import lr_factor, make_optimizer, set_learning_rates, set_trainable, stage_steps
from cifar_tl.training.self_training import POOL_DESCRIPTION



@dataclass
class ConsistencyResult(TrainResult):
    # The pool images of the last finished epoch, in the order they were drawn: their positions in the pool,
    # the class the weak view predicted and its confidence (CPU tensors). What `diagnostics` checks afterwards.
    last_epoch: dict | None = None


def _pool_order(pool_size: int, needed: int, generator: torch.Generator) -> torch.Tensor:
    """`needed` positions in the pool for one epoch: a random permutation, and further ones while more are needed."""
    if pool_size < 1:
        raise UserError("consistency training needs unlabelled images, but the pool is empty: use a smaller "
                        "--per-class or --val-per-class, or a dataset with more training images")
    rounds = -(-needed // pool_size)
    return torch.cat([torch.randperm(pool_size, generator=generator) for _ in range(rounds)])[:needed]


def _pseudo_labels(weak_logits: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The weak view's class, its confidence (softmax probability) and the mask of those that reach `threshold`.

    A threshold of 1 keeps none: float rounding can make a softmax exactly 1, so `>=` alone would keep some."""
    confidence, predicted = weak_logits.detach().float().softmax(1).max(1)
    mask = confidence >= threshold if threshold < 1 else torch.zeros_like(confidence, dtype=torch.bool)
    return predicted, confidence, mask


def consistency_train(model: Classifier, recipe: Recipe, x_train: torch.Tensor, y_train: torch.Tensor,
                      x_val: torch.Tensor, y_val: torch.Tensor, pool_images: torch.Tensor, image_size: int,
                      device: torch.device, seed: int, progress: bool = True, precision: str = "fp32",
                      state: StateFile | None = None,
                      start_weights: dict[str, list[torch.Tensor]] | None = None) -> ConsistencyResult:
    """Train `model` (already trained by the recipe's own stages) through `recipe.consistency`'s stages.

    x_* are uint8 (N, H, W, 3), y_* int64 labels; `pool_images` are uint8 (N, H, W, 3) and come without
    labels. `start_weights` (each layer group's parameters) are what `distance_from_pretrained` measures
    from (None: the weights `model` has now). With `state`, everything the next epoch depends on is saved
    there after every epoch, and a call that finds a saved state resumes from it (or, if that call had
    finished, returns its final model and result at once), as `loop.train` does.

    Each history entry has `loop.train`'s keys (`train_loss` and `train_accuracy` are the labelled batches'),
    plus `unlabelled_loss` (the weighted part's mean, before `weight`) and `mask_rate` (the share of pool
    images whose pseudo-label reached the threshold)."""
    settings: Consistency = recipe.consistency
    stages = settings.stages
    call_started = time.perf_counter()
    n_classes = model.head.out_features
    result = ConsistencyResult()
    generator, rng, start_weights, ema, loss_fn, saved, finished = loop_setup(model, recipe, stages, seed, device,
                                                                               state, result, start_weights)
    if finished:  # this training had finished: its final model and result
        return result
    x_train, y_train = x_train.to(device), y_train.to(device)
    x_val, y_val = x_val.to(device), y_val.to(device)
    pool_images = pool_images.to(device)
    eval_bs = eval_batch_size(device)
    epoch = 0
    for stage_index, stage in enumerate(stages):
        done_here = epochs_done(result, stage_index)
        if saved is not None and done_here == stage.epochs:  # a stage the interrupted run had finished
            epoch += stage.epochs
            continue
        groups = set_trainable(model, stage)
        optimizer = make_optimizer(model, stage, recipe, groups)
        if saved is not None and saved["stage"] == stage_index:  # resume inside this stage: its optimizer too
            optimizer.load_state_dict(saved["optimizer"])
        saved = None
        augmenting = stage_augments(stage, recipe)
        augmentation = recipe.augment if augmenting else "none"
        mixing = augmenting and (recipe.mixup_alpha > 0 or recipe.cutmix_alpha > 0)
        n = len(x_train)
        batch_size, steps_per_epoch, total_steps, warmup_steps = stage_steps(n, recipe, stage)
        unlabelled_size = settings.unlabelled_ratio * batch_size
        step = done_here * steps_per_epoch
        epoch += done_here
        bar = tqdm(range(done_here, stage.epochs), desc=f"consistency stage {stage_index + 1}/{len(stages)}",
                   disable=not progress, initial=done_here, total=stage.epochs)
        for _ in bar:
            lrs_at_start = {}
            order = torch.randperm(n, generator=generator).to(device)
            pool_order = _pool_order(len(pool_images), steps_per_epoch * unlabelled_size, generator).to(device)
            loss_sum = torch.zeros((), device=device)  # summed on the device: no sync per step
            unlabelled_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.long)
            kept = torch.zeros((), device=device, dtype=torch.long)
            drawn, predicted_all, confidence_all = [], [], []
            seen = 0
            started = time.perf_counter()
            for b in range(steps_per_epoch):
                index = order[b * batch_size : (b + 1) * batch_size]
                pool_index = pool_order[b * unlabelled_size : (b + 1) * unlabelled_size]
                set_learning_rates(optimizer, lr_factor(stage.schedule, step, total_steps, warmup_steps), lrs_at_start)
                targets = y_train[index]
                x = make_batch(x_train, index, model, image_size, augmentation, generator)
                labelled_targets = targets
                if mixing:
                    x, labelled_targets = augment.mix_batch(x, targets, n_classes, recipe.mixup_alpha,
                                                            recipe.cutmix_alpha, rng, generator)
                    targets = labelled_targets.argmax(1)  # the dominant class, for the training accuracy
                weak = make_batch(pool_images, pool_index, model, image_size, settings.weak, generator)
                strong = make_batch(pool_images, pool_index, model, image_size, settings.strong, generator)
                inputs = torch.cat([x, weak, strong]).contiguous(memory_format=torch.channels_last)
                with autocast(device, precision):
                    logits = model(inputs)
                labelled_logits, weak_logits, strong_logits = logits.float().split(
                    [len(index), len(pool_index), len(pool_index)])
                predicted, confidence, mask = _pseudo_labels(weak_logits, settings.threshold)
                labelled_loss = loss_fn(labelled_logits, labelled_targets)
                unlabelled_loss = (F.cross_entropy(strong_logits, predicted, reduction="none") * mask).mean()
                loss = labelled_loss + settings.weight * unlabelled_loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if ema is not None:
                    ema.update_parameters(model)
                step += 1
                loss_sum += labelled_loss.detach() * len(index)
                unlabelled_sum += unlabelled_loss.detach()
                correct += (labelled_logits.argmax(1) == targets).sum()
                kept += mask.sum()
                drawn.append(pool_index)
                predicted_all.append(predicted)
                confidence_all.append(confidence)
                seen += len(index)
            if device.type == "cuda":
                torch.cuda.synchronize()
            result.train_seconds += time.perf_counter() - started
            result.images_trained += seen + 2 * steps_per_epoch * unlabelled_size  # labelled, and both views
            val_logits = compute_outputs(model, x_val, image_size, eval_bs, device, precision=precision)
            set_trainable(model, stage)  # compute_outputs restored train mode: re-freeze BatchNorm
            val = classification_metrics(val_logits, y_val.cpu().numpy(), n_classes)
            epoch += 1
            record = {
                **epoch_record(epoch, stage_index, loss_sum, correct, seen, val, lrs_at_start, model, start_weights),
                "unlabelled_loss": unlabelled_sum.item() / max(steps_per_epoch, 1),
                "mask_rate": kept.item() / max(steps_per_epoch * unlabelled_size, 1),
            }
            result.history.append(record)
            result.last_epoch = {"positions": torch.cat(drawn).cpu(), "predicted": torch.cat(predicted_all).cpu(),
                                 "confidence": torch.cat(confidence_all).cpu()}
            bar.set_postfix(train=f"{record['train_accuracy']:.3f}", val=f"{record['val_accuracy']:.3f}",
                            mask=f"{record['mask_rate']:.2f}")
            if state is not None:
                state.save(_with_last_epoch(saved_state(model, optimizer, ema, generator, rng, result, stage_index,
                                                   call_started), result))
    finish_training(model, ema, start_weights, result, state, generator, rng, call_started,
                    lambda saved: _with_last_epoch(saved, result))
    return result


def _with_last_epoch(saved: dict, result: ConsistencyResult) -> dict:
    saved["result"]["last_epoch"] = result.last_epoch
    return saved


def merged_result(labelled: TrainResult, consistency: ConsistencyResult) -> TrainResult:
    """The labels-only training and the consistency training as one history (epochs and stages numbered on,
    each entry saying its `phase`: "labelled" or "consistency") and one set of timings."""
    history = [{**h, "phase": "labelled"} for h in labelled.history]
    epoch = history[-1]["epoch"] if history else 0
    stage = history[-1]["stage"] if history else 0
    history += [{**h, "epoch": h["epoch"] + epoch, "stage": h["stage"] + stage, "phase": "consistency"}
                for h in consistency.history]
    return TrainResult(
        history,
        labelled.train_seconds + consistency.train_seconds,
        labelled.images_trained + consistency.images_trained,
        labelled.feature_seconds + consistency.feature_seconds,
        resumed_at_epochs=list(labelled.resumed_at_epochs) + [e + epoch for e in consistency.resumed_at_epochs],
        earlier_seconds=labelled.earlier_seconds + consistency.earlier_seconds,
        distance_from_pretrained=consistency.distance_from_pretrained,
    )


def accounting(history: list[dict], settings: Consistency, pool: np.ndarray, available: int) -> dict:
    """What the record says about the unlabelled images: how many were used and how, epoch by epoch of the
    run's history (`merged_result`'s). Everything here was known to the training code; no pool label is read."""
    from cifar_tl.data.subsets import indices_hash

    return {
        "pool": {
            "drawn_from": POOL_DESCRIPTION,
            "available": available,
            "used": len(pool),
            "indices_sha256": indices_hash(pool),
            "labels_given_to_training": False,
        },
        "settings": {k: v for k, v in asdict(settings).items() if k != "stages"},
        "epochs": [{"epoch": h["epoch"], "stage": h["stage"], "mask_rate": h["mask_rate"],
                    "unlabelled_loss": h["unlabelled_loss"]} for h in history if h.get("phase") == "consistency"],
    }


def diagnostics(last: dict | None, epoch: int | None, threshold: float, pool_labels: np.ndarray,
                classes: list[str]) -> dict:
    """For the reader only, computed after training against the pool's withheld labels: of the pool images the
    last epoch (`ConsistencyResult.last_epoch`, the run's epoch `epoch`) drew, how often the weak view's class
    was right, overall and where its confidence reached the threshold (the pseudo-labels that trained), and
    per pseudo-label class."""
    pool_labels = np.asarray(pool_labels)
    if last is None:
        return {"note": "no epoch of consistency training ran", "last_epoch": None}
    positions, predicted = last["positions"].cpu().numpy(), last["predicted"].cpu().numpy()
    confidence = last["confidence"].cpu().numpy()
    kept = confidence >= threshold if threshold < 1 else np.zeros(len(confidence), dtype=bool)
    right = predicted == pool_labels[positions]
    return {
        "note": "computed after training against the pool's withheld labels, for the reader only; the training "
                "code never received them",
        "last_epoch": {
            "epoch": epoch,
            "pool_images_drawn": int(len(positions)),
            "pseudo_labels": int(kept.sum()),
            "weak_view_accuracy": float(right.mean()) if len(right) else None,
            "pseudo_label_accuracy": float(right[kept].mean()) if kept.any() else None,
            "pseudo_labels_per_class": {name: int((predicted[kept] == c).sum()) for c, name in enumerate(classes)},
            "pseudo_label_accuracy_per_class": {
                name: float(right[kept & (predicted == c)].mean()) if (kept & (predicted == c)).any() else None
                for c, name in enumerate(classes)},
        },
    }
