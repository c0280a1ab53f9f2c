"""Evaluation: a model's outputs on uint8 images (optionally averaged over test-time views), its validation
accuracy as deployed, and the one reading of the test split a record makes."""

from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from cifar_tl.core.device import autocast, tune_cpu_allocator
from cifar_tl.core.metrics import classification_metrics
from cifar_tl.data import augment
from cifar_tl.training.recipes import Recipe


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


def sklearn_probe_on_features(recipe: Recipe, result, labels, test_features: torch.Tensor) -> dict:
    """scikit-learn's logistic regression on the frozen features the recipe's head trained on, C chosen on
    the validation split (`logistic_probe.probe_chosen_on_validation`); and, beside it with its own seconds,
    C chosen without the validation split, by cross-validation over the training features alone
    (`logistic_probe.probe_chosen_by_cross_validation`). Returns the probe and the cross-validation's seconds."""
    from cifar_tl.training.logistic_probe import probe_chosen_by_cross_validation, probe_chosen_on_validation

    if result.features is None:
        raise ValueError(f"recipe {recipe.name}: sklearn_probe needs a head trained on cached features")
    (train_features, val_features), (y_train, y_val, y_test) = result.features, labels
    train, test = (train_features.numpy(), y_train.numpy()), (test_features.numpy(), y_test.numpy())
    probe = probe_chosen_on_validation(train, (val_features.numpy(), y_val.numpy()), test, recipe.sklearn_probe)
    started = time.perf_counter()
    probe["cross_validated"] = probe_chosen_by_cross_validation(train, test, recipe.sklearn_probe)
    return probe, time.perf_counter() - started


def accuracy(logits: torch.Tensor, labels: torch.Tensor, n_classes: int) -> float:
    return classification_metrics(logits, labels.numpy(), n_classes)["accuracy"]


def validation_accuracy(model, recipe: Recipe, result, views: str | None, x_val, y_val, size: int, precision: str,
                        device, batch: int):
    """The final model's validation accuracy as deployed (its EMA and test-time views), and with `views`, the
    accuracy with and without them ({view: accuracy}) from the same pass."""
    n_classes = model.head.out_features
    if views is not None:
        with_views, plain = compute_outputs(model, x_val, size, batch, device, tta=views,
                                            precision=precision, plain_too=True)
        by_views = {"none": accuracy(plain, y_val, n_classes), views: accuracy(with_views, y_val, n_classes)}
        return by_views, by_views[recipe.tta]
    if recipe.ema_decay > 0 or recipe.train_size(size) != size:  # not the last epoch's model, or not its size
        logits = compute_outputs(model, x_val, size, batch, device, precision=precision)
        return None, accuracy(logits, y_val, n_classes)
    return None, result.history[-1]["val_accuracy"]


def read_test_set(model, recipe: Recipe, result, views: str | None, labels, x_test, y_test, size: int, precision: str,
                  device, batch: int, progress: bool) -> dict:
    """The test images, read once: the metrics of the model as deployed, the accuracy with and without
    `views`, and scikit-learn's probe on the frozen features (and its seconds) for a recipe that has it."""
    n_classes = model.head.out_features
    out = {"by_views": None, "sklearn_probe": None, "sklearn_seconds": None, "cross_validation_seconds": None}
    if recipe.sklearn_probe is not None:  # the test images' frozen features feed the trained head and the probe
        features = compute_outputs(model, x_test, size, batch, device, features=True,
                                   progress=progress, desc="test set", precision=precision)
        with torch.inference_mode():
            logits = model.head(features.to(device)).float().cpu()
        started = time.perf_counter()
        out["sklearn_probe"], out["cross_validation_seconds"] = sklearn_probe_on_features(recipe, result,
                                                                                         (*labels, y_test), features)
        out["sklearn_seconds"] = time.perf_counter() - started - out["cross_validation_seconds"]
    elif views is not None:
        with_views, plain = compute_outputs(model, x_test, size, batch, device, progress=progress,
                                            desc="test set", tta=views, precision=precision, plain_too=True)
        logits = with_views if recipe.tta != "none" else plain
        out["by_views"] = {"none": accuracy(plain, y_test, n_classes), views: accuracy(with_views, y_test, n_classes)}
    else:
        logits = compute_outputs(model, x_test, size, batch, device, progress=progress, desc="test set",
                                 precision=precision)
    out["metrics"] = classification_metrics(logits, y_test.numpy(), n_classes)
    # the probability the model gives its prediction, per test image (its most confident mistakes)
    out["confidence"] = [round(p, 4) for p in logits.softmax(1).max(1).values.tolist()]
    return out
