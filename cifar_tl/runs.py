"""Runs: a config names a record; a record holds everything needed to trust and compare a result.

A record is JSON under `CIFAR_TL_CACHE/runs/`, named by a hash of the config, the data checksum and
the code version, and written atomically. An existing record is read back instead of training again,
unless `force` is given; a change of code or data gives a new name, so no result is overwritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .backbones import check_backbone, create_model
from .data import balanced_subset, capped_test, indices_hash, load_dataset, resolve_source, source_checksum
from .errors import UserError
from .files import atomic_path, cache_dir, sha256_json, write_json
from .recipes import get_profile, get_recipe, scaled_stages
from .train import classification_metrics, compute_outputs, eval_batch_size, pick_device, train

# The modules whose code decides a result: editing one gives every run a new record name.
_RESULT_MODULES = ("data.py", "backbones.py", "augment.py", "recipes.py", "train.py", "runs.py")
DEFAULT_VAL_PER_CLASS = 50


def code_version() -> str:
    digest = hashlib.sha256(__version__.encode())
    for name in _RESULT_MODULES:
        digest.update((Path(__file__).parent / name).read_bytes())
    return f"{__version__}+{digest.hexdigest()[:12]}"


@dataclass(frozen=True)
class RunConfig:
    recipe: str
    backbone: str
    per_class: int
    seed: int
    profile: str
    image_size: int
    epochs: int | None  # every stage's epochs, if set; else the recipe's (capped by the profile)
    test_limit: int | None  # None: the whole test split
    val_per_class: int
    data: str

    def as_dict(self) -> dict:
        return asdict(self)


_PROFILE_DEFAULT = "profile"


def make_config(
    recipe: str,
    backbone: str = "efficientnet_lite0",
    per_class: int = 100,
    seed: int = 0,
    profile: str = "smoke",
    image_size: int | None = None,
    epochs: int | None = None,
    test_limit: int | None | str = _PROFILE_DEFAULT,
    val_per_class: int = DEFAULT_VAL_PER_CLASS,
    data: str | None = None,
) -> RunConfig:
    """Check the arguments and fill what is unset from the recipe and the profile."""
    chosen_recipe, chosen_profile = get_recipe(recipe), get_profile(profile)
    check_backbone(backbone)
    for name, value in (("--per-class", per_class), ("--image-size", image_size), ("--epochs", epochs)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise UserError(f"{name} must be a positive whole number (got {value!r})")
    if image_size is not None and image_size < 16:
        raise UserError(f"--image-size must be at least 16 pixels (got {image_size})")
    if not isinstance(val_per_class, int) or val_per_class < 1:
        raise UserError(f"--val-per-class must be a positive whole number (got {val_per_class!r}): "
                        "validation images decide every choice")
    if not isinstance(seed, int) or seed < 0:
        raise UserError(f"--seed must be a whole number of at least 0 (got {seed!r})")
    if test_limit == _PROFILE_DEFAULT:
        test_limit = chosen_profile.test_limit
    if test_limit is not None and (not isinstance(test_limit, int) or test_limit < 1):
        raise UserError(f"--test-limit must be a positive whole number or 'all' (got {test_limit!r})")
    return RunConfig(
        recipe=recipe,
        backbone=backbone,
        per_class=per_class,
        seed=seed,
        profile=profile,
        image_size=image_size or chosen_recipe.image_size or chosen_profile.image_size,
        epochs=epochs,
        test_limit=test_limit,
        val_per_class=val_per_class,
        data=resolve_source(data),
    )


def record_path(config: RunConfig, checksum: str | None = None) -> Path:
    checksum = checksum or source_checksum(config.data)
    key = {k: v for k, v in config.as_dict().items() if k != "data"}  # the path may differ per machine
    digest = sha256_json({"config": key, "data": checksum, "code": code_version()})[:12]
    return cache_dir("runs") / f"{config.recipe}-{config.backbone}-s{config.seed}-{digest}.json"


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    import torchvision

    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "cifar_tl": __version__,
    }


_DATASETS: dict[str, object] = {}


def _dataset(source: str, progress: bool):
    checksum = source_checksum(source)
    if checksum not in _DATASETS:
        _DATASETS.clear()  # keep one dataset in memory at a time
        _DATASETS[checksum] = load_dataset(source, progress=progress)
    return _DATASETS[checksum]


def read_record(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _valid_record(path: Path, checksum: str) -> dict | None:
    """The record at `path` if it is readable and made by this code from this data."""
    record = read_record(path) if path.exists() else None
    if record is None or record.get("code_version") != code_version() or record["data"]["checksum"] != checksum:
        return None
    return record


def _cached_model(config: RunConfig, weights: Path, n_classes: int):
    """The trained model saved beside its record by an earlier `run(..., return_model=True)`, or None."""
    if not weights.exists():
        return None
    try:
        model = create_model(config.backbone, n_classes, pretrained=False)
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    except Exception:  # unreadable or from another architecture: train again
        return None
    return model.eval()


def run(config: RunConfig, force: bool = False, progress: bool = True, device: str | None = None,
        return_model: bool = False):
    """Train and evaluate `config`, or read its existing record back. Returns the record, or with
    `return_model` (record, trained model): the model's weights are then kept beside the record
    (`<record>.pt`), so that asking again reads them back too instead of training again."""
    checksum = source_checksum(config.data)
    path = record_path(config, checksum)
    weights = path.with_suffix(".pt")
    existing = _valid_record(path, checksum)
    if not force and existing is not None:
        if not return_model:
            return existing
        model = _cached_model(config, weights, len(existing["data"]["classes"]))
        if model is not None:
            return existing, model
    elif not force and path.exists():
        print(f"cifar-tl: record {path.name} is unreadable or stale; running again", file=sys.stderr)

    started = time.perf_counter()
    dataset = _dataset(config.data, progress)
    recipe = get_recipe(config.recipe)
    stages = scaled_stages(recipe, get_profile(config.profile).max_epochs, config.epochs)
    train_idx, val_idx = balanced_subset(
        dataset.train_labels, config.per_class, config.val_per_class, config.seed, dataset.classes
    )
    test_idx = capped_test(dataset.test_labels, config.test_limit)

    torch.manual_seed(config.seed)  # the new head's initial weights
    model = create_model(config.backbone, len(dataset.classes))
    chosen_device = pick_device(device)
    if chosen_device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    def tensors(images, labels, index):
        return torch.from_numpy(images[index]), torch.from_numpy(labels[index])

    x_train, y_train = tensors(dataset.train_images, dataset.train_labels, train_idx)
    x_val, y_val = tensors(dataset.train_images, dataset.train_labels, val_idx)
    x_test, y_test = tensors(dataset.test_images, dataset.test_labels, test_idx)
    result = train(model, recipe, stages, x_train, y_train, x_val, y_val, config.image_size, chosen_device,
                   config.seed, progress)

    eval_started = time.perf_counter()
    batch = eval_batch_size(chosen_device)
    test_logits = compute_outputs(model, x_test, config.image_size, batch, chosen_device, progress=progress,
                                  desc="test set", tta=recipe.tta)
    eval_seconds = time.perf_counter() - eval_started
    n_classes = len(dataset.classes)
    test = classification_metrics(test_logits, y_test.numpy(), n_classes)
    if recipe.tta != "none" or recipe.ema_decay > 0:  # the final model differs from the last epoch's
        val_logits = compute_outputs(model, x_val, config.image_size, batch, chosen_device, tta=recipe.tta)
        val_accuracy = classification_metrics(val_logits, y_val.numpy(), n_classes)["accuracy"]
    else:
        val_accuracy = result.history[-1]["val_accuracy"]

    record = {
        "name": path.stem,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "code_version": code_version(),
        "config": config.as_dict(),
        "recipe": {**recipe.as_dict(), "stages": [asdict(s) for s in stages]},
        "data": {
            **dataset.identity,
            "checksum": checksum,
            "seed": config.seed,
            "counts": {"train": len(train_idx), "val": len(val_idx), "test": len(test_idx)},
            "train_indices": train_idx.tolist(),
            "val_indices": val_idx.tolist(),
            "test_indices_sha256": indices_hash(test_idx),
            "subset_sha256": indices_hash(np.concatenate([train_idx, val_idx])),
        },
        "weights": model.weights,
        "model": {"groups": model.group_names(), "parameters": model.parameter_counts()},
        "metrics": {
            "test_accuracy": test["accuracy"],
            "test_loss": test["loss"],
            "test_images": len(test_idx),
            "test_limited": config.test_limit is not None and len(test_idx) < len(dataset.test_labels),
            "val_accuracy": val_accuracy,
            "per_class_accuracy": dict(zip(dataset.classes, test["per_class_accuracy"])),
            "confusion_matrix": test["confusion_matrix"],
            "test_predictions": test["predictions"],
            "test_labels": y_test.tolist(),
            "test_indices": test_idx.tolist(),
        },
        "history": result.history,
        "timing": {
            "total_seconds": time.perf_counter() - started,
            "train_seconds": result.train_seconds,
            "feature_seconds": result.feature_seconds,
            "eval_seconds": eval_seconds,
            "train_images_per_second": result.images_trained / result.train_seconds
            if result.images_trained and result.train_seconds
            else None,
            "eval_images_per_second": len(test_idx) / eval_seconds if eval_seconds else None,
            "device": str(chosen_device),
        },
        "machine": machine(),
    }
    if return_model:
        with atomic_path(weights) as tmp:
            torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
    if force or existing is None:  # a valid record is only replaced with --force
        write_json(path, record)
    return (record, model) if return_model else record


def run_seeds(recipe: str, backbone: str, profile: str, seeds=None, force: bool = False, progress: bool = True,
              **config) -> list[dict]:
    """One record per seed (the profile's seeds unless given): the same change over several subsets."""
    seeds = get_profile(profile).seeds if seeds is None else seeds
    return [
        run(make_config(recipe, backbone, seed=s, profile=profile, **config), force=force, progress=progress)
        for s in seeds
    ]
