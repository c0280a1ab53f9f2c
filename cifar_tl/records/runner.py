"""Making a record: `run` trains and evaluates a config, or reads its existing record back.

Its steps each have a name: the inputs (the labelled subset, the validation split, the test split if the
profile reads it), the training (the recipe's stages, then unlabelled images if it has them), the evaluation,
and the record, written atomically into the cache (`CIFAR_TL_CACHE/runs/`). An interrupted run resumes from its
last finished epoch. Rendering the book from committed records happens on the book's side
(`book.chapter.record_for`), never here.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from cifar_tl.core.device import eval_batch_size, machine, pick_device
from cifar_tl.core.errors import UserError
from cifar_tl.core.files import cache_dir, exclusive_lock, save_torch, write_json
from cifar_tl.core.resume import StateFile
from cifar_tl.data.sources import ImageDataset, load_dataset, portable_source, source_checksum
from cifar_tl.data.subsets import balanced_subset, capped_test, indices_hash
from cifar_tl.models.backbones import create_model
from cifar_tl.records.identity import RunConfig, code_version, current_recipe, identity, record_name, run_recipe
from cifar_tl.records.store import find_record
from cifar_tl.training.evaluate import compute_outputs, read_test_set, validation_accuracy
from cifar_tl.training.loop import train, weights_of
from cifar_tl.training.profiles import get_profile
from cifar_tl.training.recipes import Recipe


class _NoTestSet:
    """The test split of a pilot run: any use of it is an error, so no setting can be chosen by it."""

    def _refuse(self, *args, **kwargs):
        raise RuntimeError("a pilot run never reads the test split")

    __getitem__ = __len__ = __iter__ = __array__ = _refuse


_NO_TEST_SET = _NoTestSet()


_DATASETS: dict[str, object] = {}


def _dataset(source: str, progress: bool):
    checksum = source_checksum(source)
    if checksum not in _DATASETS:
        _DATASETS.clear()  # keep one dataset in memory at a time
        _DATASETS[checksum] = load_dataset(source, progress=progress)
    return _DATASETS[checksum]


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


@dataclass
class _Inputs:
    """What a run trains and is evaluated on: the subset's indices and their images and labels as tensors; the
    test split's only when the profile reads it."""
    dataset: ImageDataset
    train_idx: np.ndarray
    val_idx: np.ndarray
    test_idx: np.ndarray
    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor] | None


def _inputs(config: RunConfig, recipe: Recipe, dataset: ImageDataset) -> _Inputs:
    """The labelled subset and validation split of `config.seed`, and the (capped) test split."""
    train_idx, val_idx = balanced_subset(
        dataset.train_labels, config.per_class, config.val_per_class, config.seed, dataset.classes
    )
    if (recipe.self_training or recipe.consistency) and len(train_idx) + len(val_idx) == len(dataset.train_images):
        raise UserError(f"recipe {config.recipe} trains on unlabelled images too, but there are none left: every "
                        "training image is in the labelled subset or the validation split; use a smaller "
                        "--per-class or --val-per-class")  # said before training, not after it
    reads_test = get_profile(config.profile).reads_test
    if not reads_test:  # a pilot chooses settings: the test split is not even at hand
        dataset = replace(dataset, test_images=_NO_TEST_SET, test_labels=_NO_TEST_SET)
    test_idx = capped_test(dataset.test_labels, config.test_limit) if reads_test else np.zeros(0, dtype=np.int64)

    def tensors(images, labels, index):
        return torch.from_numpy(images[index]), torch.from_numpy(labels[index])

    return _Inputs(dataset, train_idx, val_idx, test_idx,
                   tensors(dataset.train_images, dataset.train_labels, train_idx),
                   tensors(dataset.train_images, dataset.train_labels, val_idx),
                   tensors(dataset.test_images, dataset.test_labels, test_idx) if reads_test else None)


def _train(config: RunConfig, recipe: Recipe, model, inputs: _Inputs, device, progress: bool, state: StateFile):
    """The recipe's training, at `recipe.train_size` of the input size: its stages on the labelled subset, then
    self-training or consistency training on unlabelled images when it has them. Returns the final model, its
    training, and the record's section on the unlabelled images (None without)."""
    labelled = (*inputs.train, *inputs.val)
    result = train(model, recipe, recipe.stages, *labelled, recipe.train_size(config.image_size), device, config.seed,
                   progress, config.precision, state.child("train"))
    if recipe.self_training is not None:  # the model just trained is the first teacher
        return _self_train(config, recipe, model, result, inputs, labelled, device, progress, state)
    if recipe.consistency is not None:  # the model just trained is where consistency training starts
        return _consistency_train(config, recipe, model, result, inputs, labelled, device, progress, state)
    return model, result, None


def _evaluate(config: RunConfig, recipe: Recipe, model, result, inputs: _Inputs, device, progress: bool) -> dict:
    """The record's metrics: validation accuracy as deployed and, in a profile that reads it, the test split,
    read once; with test-time views, the accuracy with and without them. Also the evaluation's seconds."""
    batch = eval_batch_size(device)
    views = recipe.tta if recipe.tta != "none" else recipe.report_tta  # test-time views evaluated, if any
    val_views, val_accuracy = validation_accuracy(model, recipe, result, views, *inputs.val, config.image_size,
                                                  config.precision, device, batch)
    started = time.perf_counter()
    tested = None
    if inputs.test is not None:
        tested = read_test_set(model, recipe, result, views, (inputs.train[1], inputs.val[1]), *inputs.test,
                               config.image_size, config.precision, device, batch, progress)
    probes = ((tested or {}).get("sklearn_seconds") or 0.0) + ((tested or {}).get("cross_validation_seconds") or 0.0)
    seconds = time.perf_counter() - started - probes  # the test images' evaluation alone
    metrics = _metrics(val_accuracy, tested, inputs, config)
    if views is not None:  # accuracy with and without the test-time views, from the same passes
        metrics["by_test_time_views"] = {
            view: {"val_accuracy": val_views[view], **({"test_accuracy": tested["by_views"][view]} if tested else {})}
            for view in ("none", views)}
    if tested is not None and tested["sklearn_probe"] is not None:
        metrics["sklearn_probe"] = tested["sklearn_probe"]
    sizes_seconds = None
    if tested is not None and config.eval_sizes:
        started = time.perf_counter()
        metrics["test_predictions_by_size"] = _predictions_by_size(model, inputs.test[0], config, device, batch,
                                                                   progress)
        sizes_seconds = time.perf_counter() - started
    return {"metrics": metrics, "seconds": seconds, "sklearn_seconds": (tested or {}).get("sklearn_seconds"),
            "cross_validation_seconds": (tested or {}).get("cross_validation_seconds"), "sizes_seconds": sizes_seconds}


def _predictions_by_size(model, images, config: RunConfig, device, batch: int, progress: bool) -> dict[str, list]:
    """The trained model's class for every test image fed at each of `config.eval_sizes` other than the run's
    own (whose predictions are the record's `test_predictions`), without test-time views: keyed by the size."""
    return {str(size): compute_outputs(model, images, size, batch, device, progress=progress,
                                       desc=f"test images at {size} px", precision=config.precision).argmax(1).tolist()
            for size in config.eval_sizes if size != config.image_size}


def _metrics(val_accuracy: float, tested: dict | None, inputs: _Inputs, config: RunConfig) -> dict:
    """Validation accuracy, and what the test images gave (nothing in a profile that never reads them: a pilot)."""
    if tested is None:
        return {"val_accuracy": val_accuracy, "test_read": False, "test_images": 0, "test_accuracy": None}
    test, (_, y_test), dataset = tested["metrics"], inputs.test, inputs.dataset
    return {
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "test_images": len(inputs.test_idx),
        "test_limited": config.test_limit is not None and len(inputs.test_idx) < len(dataset.test_labels),
        "val_accuracy": val_accuracy,
        "per_class_accuracy": dict(zip(dataset.classes, test["per_class_accuracy"])),
        "confusion_matrix": test["confusion_matrix"],
        "test_predictions": test["predictions"],
        "test_confidence": tested["confidence"],
        "test_labels": y_test.tolist(),
        "test_indices": inputs.test_idx.tolist(),
    }


def _record(config: RunConfig, ident: dict, checksum: str, inputs: _Inputs, model, result, evaluated: dict,
            unlabelled: dict | None, recipe: Recipe, device, started: float) -> dict:
    """The run record: identity, config, recipe, data subset, weights, metrics, history, timing, machine."""
    train_idx, val_idx, test_idx = inputs.train_idx, inputs.val_idx, inputs.test_idx
    record = {
        "name": record_name(ident),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "code_version": code_version(),
        "identity": ident,
        "config": {**config.as_dict(), "data": portable_source(config.data)},
        "recipe": current_recipe(config),
        "data": {
            **inputs.dataset.identity,
            "source": portable_source(config.data),
            "checksum": checksum,
            "seed": config.seed,
            "counts": {"train": len(train_idx), "val": len(val_idx), "test": len(test_idx)},
            "train_indices": train_idx.tolist(),
            "val_indices": val_idx.tolist(),
            "test_indices_sha256": indices_hash(test_idx),
            "subset_sha256": indices_hash(np.concatenate([train_idx, val_idx])),
        },
        "weights": model.weights,
        "model": {"groups": model.group_names(), "parameters": model.parameter_counts(),
                  "distance_from_pretrained": result.distance_from_pretrained},
        "metrics": evaluated["metrics"],
        "history": result.history,
        "timing": {
            # with the time an interrupted run had spent in earlier processes, up to its last saved epoch
            "total_seconds": time.perf_counter() - started + result.earlier_seconds,
            "resumed_at_epochs": result.resumed_at_epochs,
            "train_seconds": result.train_seconds,
            "feature_seconds": result.feature_seconds,
            "eval_seconds": evaluated["seconds"],
            "train_images_per_second": result.images_trained / result.train_seconds
            if result.images_trained and result.train_seconds
            else None,
            "eval_images_per_second": len(test_idx) / evaluated["seconds"] if evaluated["seconds"] else None,
            "device": str(device),
            "precision": config.precision,
        },
        "machine": machine(),
    }
    if unlabelled is not None:
        record["self_training" if recipe.consistency is None else "consistency"] = unlabelled
    if evaluated["sklearn_seconds"] is not None:
        record["timing"]["sklearn_probe_seconds"] = evaluated["sklearn_seconds"]
        record["timing"]["cross_validation_seconds"] = evaluated["cross_validation_seconds"]
    if evaluated["sizes_seconds"] is not None:
        record["timing"]["eval_sizes_seconds"] = evaluated["sizes_seconds"]
    return record


def run(config: RunConfig, force: bool = False, progress: bool = True, device: str | None = None,
        return_model: bool = False):
    """Train and evaluate `config`, or read its existing record back. Returns the record, or with
    `return_model` (record, trained model): the model's weights are then kept beside the record
    (`<record>.pt`), so that asking again reads them back too instead of training again. An interrupted run
    resumes from its last finished epoch."""
    started = time.perf_counter()
    checksum = source_checksum(config.data)
    dataset = _dataset(config.data, progress)
    torch.manual_seed(config.seed)  # the new head's initial weights
    model = create_model(config.backbone, len(dataset.classes))  # loads the weights, or says why it cannot
    ident = identity(config, checksum, model.weights["sha256"])
    path = cache_dir("runs") / f"{record_name(ident)}.json"
    weights = path.with_suffix(".pt")
    reused = None if force else _reusable(config, ident, path, weights, return_model)
    if reused is not None:
        return reused
    # One process trains a run at a time (two chapters built side by side may both need it): another waits for
    # the lock, then reads the record the first one wrote instead of training it again.
    asked = time.perf_counter()
    with exclusive_lock(path.with_suffix(".lock"), f"cifar-tl: another process is training {path.stem}; waiting"):
        started += time.perf_counter() - asked  # a run's timing leaves out the wait
        reused = None if force else _reusable(config, ident, path, weights, return_model, quiet=True)
        if reused is not None:
            return reused
        return _train_and_record(config, ident, checksum, dataset, model, path, weights, force, device,
                                 progress, return_model, started)


def _reusable(config: RunConfig, ident: dict, path: Path, weights: Path, return_model: bool, quiet: bool = False):
    """What `run` returns when the record is already there (and, with `return_model`, its saved model), else None."""
    existing = find_record(record_name(ident), ident)
    if existing is None:
        if path.exists() and not quiet:
            print(f"cifar-tl: record {path.name} is unreadable or not of this run; running again", file=sys.stderr)
        return None
    if not return_model:
        return existing
    cached = _cached_model(config, weights, len(existing["data"]["classes"]))
    return None if cached is None else (existing, cached)


def _train_and_record(config: RunConfig, ident: dict, checksum: str, dataset: ImageDataset, model, path: Path,
                      weights: Path, force: bool, device: str | None, progress: bool, return_model: bool,
                      started: float):
    state = StateFile(path.with_suffix(".state"))  # training state of an interrupted run: it resumes from there
    if force:
        state.clear()
    existing = find_record(record_name(ident), ident)
    recipe = run_recipe(config)
    inputs = _inputs(config, recipe, dataset)
    chosen_device = pick_device(device)
    if chosen_device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    model, result, unlabelled = _train(config, recipe, model, inputs, chosen_device, progress, state)
    evaluated = _evaluate(config, recipe, model, result, inputs, chosen_device, progress)
    record = _record(config, ident, checksum, inputs, model, result, evaluated, unlabelled, recipe, chosen_device,
                     started)
    if return_model:
        save_torch(weights, {k: v.detach().cpu() for k, v in model.state_dict().items()})
    if force or existing is None:  # a valid record is only replaced with --force
        write_json(path, record)
    state.clear()
    return (record, model) if return_model else record


def _self_train(config: RunConfig, recipe: Recipe, teacher, teacher_result, inputs: _Inputs, labelled, device,
                progress, state: StateFile):
    """Self-training (`recipe.self_training`) from the trained `teacher`: returns the last student, the
    teacher's and students' training as one result, and the record's `self_training` section.

    The loop gets the pool's images only. The pool's labels are read after it has finished, for the
    section's `diagnostics` (for the reader: how right the pseudo-labels were), and nowhere else."""
    from cifar_tl.training import self_training

    settings, dataset, train_idx, val_idx = recipe.self_training, inputs.dataset, inputs.train_idx, inputs.val_idx
    pool = self_training.pool_indices(len(dataset.train_images), train_idx, val_idx, settings.pool_images, config.seed)

    def new_student(round_number: int):
        torch.manual_seed(config.seed + round_number)  # the new head's initial weights
        return create_model(config.backbone, len(dataset.classes))

    pool_images = torch.from_numpy(dataset.train_images[pool])  # images only: the labels stay behind
    outcome = self_training.self_train(teacher, new_student, recipe, *labelled, pool_images,
                                       recipe.train_size(config.image_size), device, config.seed, progress,
                                       config.precision, state)
    available = len(dataset.train_images) - len(train_idx) - len(val_idx)
    section = self_training.accounting(outcome, settings, pool, available, dataset.classes)
    section["diagnostics"] = self_training.diagnostics(outcome, dataset.train_labels[pool], dataset.classes)
    return outcome.model, self_training.merged_result(teacher_result, outcome), section


def _consistency_train(config: RunConfig, recipe: Recipe, model, labelled_result, inputs: _Inputs, labelled, device,
                       progress, state: StateFile):
    """Consistency training (`recipe.consistency`) from the trained `model`: returns the model, the labels-only
    and consistency training as one result, and the record's `consistency` section.

    The loop gets the pool's images only. The pool's labels are read after it has finished, for the
    section's `diagnostics` (for the reader: how right the last epoch's pseudo-labels were), and nowhere else."""
    from cifar_tl.training import consistency, self_training

    settings, dataset, train_idx, val_idx = recipe.consistency, inputs.dataset, inputs.train_idx, inputs.val_idx
    pool = self_training.pool_indices(len(dataset.train_images), train_idx, val_idx, settings.pool_images, config.seed)
    with torch.random.fork_rng(devices=[]):  # the weights the run started from, to measure how far they moved
        torch.manual_seed(config.seed)
        start = create_model(config.backbone, len(dataset.classes))
    start_weights = weights_of(start)
    pool_images = torch.from_numpy(dataset.train_images[pool])  # images only: the labels stay behind
    result = consistency.consistency_train(model, recipe, *labelled, pool_images, recipe.train_size(config.image_size),
                                           device, config.seed + 1, progress, config.precision,
                                           state.child("consistency"), start_weights)
    merged = consistency.merged_result(labelled_result, result)
    available = len(dataset.train_images) - len(train_idx) - len(val_idx)
    section = consistency.accounting(merged.history, settings, pool, available)
    section["diagnostics"] = consistency.diagnostics(result.last_epoch, merged.history[-1]["epoch"], settings.threshold,
                                                     dataset.train_labels[pool], dataset.classes)
    return model, merged, section
