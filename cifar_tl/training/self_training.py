"""Self-training on unlabelled images: a teacher labels a pool, a student learns from labels plus pseudo-labels.

One job: the loop of a recipe's `SelfTraining`. The run's own labels-only stages have trained the first
teacher; each round the teacher predicts the pool with test-time views, the most confident predictions
of each class become pseudo-labels, and a student trains on the true labels plus those pseudo-labels
with strong augmentation (`loop.train`, the one training loop). The student is the next round's teacher.

The loop receives the pool's IMAGES only: it cannot use the pool's labels, because it is never given
them. `diagnostics` reads those withheld labels afterwards, to tell the reader how right the pseudo-labels
were; nothing it computes goes back into training.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from tqdm.auto import tqdm

from cifar_tl.core.device import eval_batch_size
from cifar_tl.core.errors import UserError
from cifar_tl.core.metrics import classification_metrics
from cifar_tl.core.resume import StateFile
from cifar_tl.models.backbones import Classifier
from cifar_tl.training.evaluate import compute_outputs
from cifar_tl.training.loop import TrainResult, train, weights_of
from cifar_tl.training.recipes import Recipe, SelfTraining

POOL_DESCRIPTION = "training-split images outside the labelled subset and the validation split"
# Shares of the pool, most confident first, at which `diagnostics` measures the pseudo-labels' accuracy.
COVERAGE_SHARES = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def pool_indices(n_train: int, labelled: np.ndarray, validation: np.ndarray, size: int | None, seed: int) -> np.ndarray:
    """Indices of the unlabelled pool, sorted: the training split minus the labelled and validation images,
    `size` of them drawn at random with `seed` (None or more than there are: all). Labels play no part."""
    rest = np.setdiff1d(np.arange(n_train), np.concatenate([labelled, validation]))
    if size is None or size >= len(rest):
        return rest
    rng = np.random.Generator(np.random.PCG64(seed))
    return np.sort(rng.choice(rest, size=size, replace=False))


def select_pseudo_labels(probabilities: torch.Tensor, per_class: int | None, threshold: float
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Which pool images get a pseudo-label, and which: for each class, the images predicted as that class
    whose confidence (top probability) is at least `threshold`, the `per_class` most confident of them
    (None: all). Returns (positions in the pool, sorted; their pseudo-labels).

    Capping each class is what keeps the pseudo-labels balanced: without it, the classes the teacher
    predicts most readily would crowd out the others."""
    confidence, predicted = probabilities.max(1)
    confidence, predicted = confidence.numpy(), predicted.numpy()
    kept = []
    for c in range(probabilities.shape[1]):
        candidates = np.flatnonzero((predicted == c) & (confidence >= threshold))
        order = candidates[np.argsort(-confidence[candidates], kind="stable")]
        kept.append(order if per_class is None else order[:per_class])
    positions = np.sort(np.concatenate(kept)).astype(np.int64)
    return positions, predicted[positions]


def student_recipe(recipe: Recipe) -> Recipe:
    """The recipe a student trains with: the recipe's settings, the student's stages, augmentation and mixing."""
    student = recipe.self_training
    return replace(recipe, stages=student.stages, augment=student.augment, mixup_alpha=student.mixup_alpha,
                   cutmix_alpha=student.cutmix_alpha, self_training=None)


@dataclass
class Round:
    """One round: what the teacher predicted, what was kept, and how the student it trained did."""

    round: int
    probabilities: torch.Tensor  # the teacher's (pool images, classes), averaged over its test-time views
    kept: np.ndarray  # positions in the pool that got a pseudo-label
    pseudo_labels: np.ndarray
    student_val_accuracy: float = 0.0
    student_train_images: int = 0
    predict_seconds: float = 0.0
    result: TrainResult = field(default_factory=TrainResult)


@dataclass
class Outcome:
    model: Classifier  # the last student
    teacher_val_accuracy: float
    rounds: list[Round]


def _val_accuracy(model, x_val, y_val, image_size, device, tta, precision) -> float:
    logits = compute_outputs(model, x_val, image_size, eval_batch_size(device), device, tta=tta, precision=precision)
    return classification_metrics(logits, y_val.numpy(), model.head.out_features)["accuracy"]


def self_train(teacher: Classifier, new_student: Callable[[int], Classifier], recipe: Recipe,
               x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor,
               pool_images: torch.Tensor, image_size: int, device: torch.device, seed: int,
               progress: bool = True, precision: str = "fp32", state: StateFile | None = None) -> Outcome:
    """Run `recipe.self_training`'s rounds from the trained `teacher`.

    `pool_images` are uint8 (N, H, W, 3) and come without labels. `new_student(round)` returns a model
    fresh from the backbone's ImageNet weights (used when the student starts from them). Returns the last
    student, the first teacher's validation accuracy (as deployed: its EMA and test-time views) and each
    round's selection and student. With `state`, each student's training resumes from its last finished
    epoch (`train`'s state, one file a round)."""
    settings = recipe.self_training
    training = student_recipe(recipe)
    teacher_val = _val_accuracy(teacher, x_val, y_val, image_size, device, recipe.tta, precision)
    rounds = []
    for number in tqdm(range(1, settings.rounds + 1), desc="self-training rounds", disable=not progress):
        started = time.perf_counter()
        outputs = compute_outputs(teacher, pool_images, image_size, eval_batch_size(device), device,
                                  progress=progress, desc=f"pseudo-labelling (round {number})",
                                  tta=settings.teacher_tta, precision=precision)
        probabilities = outputs.softmax(1)  # log-probabilities (views averaged) or logits: probabilities either way
        predict_seconds = time.perf_counter() - started
        kept, pseudo = select_pseudo_labels(probabilities, settings.per_class, settings.threshold)
        if settings.labelled_repeats == 0 and not len(kept):
            raise UserError(f"self-training round {number}: no pool image reached the confidence threshold "
                            f"{settings.threshold} and the labelled images are not repeated: nothing to train on")
        x_student = torch.cat([x_train] * settings.labelled_repeats + [pool_images[torch.from_numpy(kept)]])
        y_student = torch.cat([y_train] * settings.labelled_repeats + [torch.from_numpy(pseudo)])
        student = copy.deepcopy(teacher) if settings.init == "teacher" else new_student(number)
        # a student that starts from the teacher is still measured from the ImageNet weights, as every run is
        pretrained = weights_of(new_student(number)) if settings.init == "teacher" else None
        result = train(student, training, settings.stages, x_student, y_student, x_val, y_val, image_size, device,
                       seed + number, progress, precision,
                       state.child(f"round{number}") if state is not None else None, pretrained)
        rounds.append(Round(number, probabilities, kept, pseudo,
                            _val_accuracy(student, x_val, y_val, image_size, device, recipe.tta, precision),
                            len(x_student), predict_seconds, result))
        teacher = student
    return Outcome(teacher, teacher_val, rounds)


def merged_result(teacher: TrainResult, outcome: Outcome) -> TrainResult:
    """The teacher's training and every student's as one history (epochs and stages numbered on, each
    entry saying its `phase`) and one set of timings."""
    history = [{**h, "phase": "teacher"} for h in teacher.history]
    merged = TrainResult(history, teacher.train_seconds, teacher.images_trained, teacher.feature_seconds,
                         resumed_at_epochs=list(teacher.resumed_at_epochs), earlier_seconds=teacher.earlier_seconds,
                         distance_from_pretrained=(outcome.rounds[-1].result if outcome.rounds
                                                   else teacher).distance_from_pretrained)
    for r in outcome.rounds:
        epoch = history[-1]["epoch"] if history else 0
        stage = history[-1]["stage"] if history else 0
        merged.resumed_at_epochs += [e + epoch for e in r.result.resumed_at_epochs]
        history += [{**h, "epoch": h["epoch"] + epoch, "stage": h["stage"] + stage, "phase": f"round {r.round}"}
                    for h in r.result.history]
        merged.train_seconds += r.result.train_seconds
        merged.images_trained += r.result.images_trained
        merged.feature_seconds += r.result.feature_seconds
        merged.earlier_seconds += r.result.earlier_seconds
    return merged


def accounting(outcome: Outcome, settings: SelfTraining, pool: np.ndarray, available: int,
               classes: list[str]) -> dict:
    """What the record says about the unlabelled images: how many were used and how, round by round.
    Everything here was known to the training code; no pool label is read."""
    rounds = []
    for r in outcome.rounds:
        confidence = r.probabilities.max(1).values.numpy()
        rounds.append({
            "round": r.round,
            "pool_images": len(pool),
            "teacher_views": settings.teacher_tta,
            "threshold": settings.threshold,
            "per_class_cap": settings.per_class,
            "pseudo_labels": len(r.kept),
            "pseudo_labels_per_class": {name: int((r.pseudo_labels == c).sum()) for c, name in enumerate(classes)},
            "predicted_per_class": {name: int((r.probabilities.argmax(1).numpy() == c).sum())
                                    for c, name in enumerate(classes)},
            "lowest_kept_confidence_per_class": {
                name: float(confidence[r.kept][r.pseudo_labels == c].min()) if (r.pseudo_labels == c).any() else None
                for c, name in enumerate(classes)},
            "labelled_repeats": settings.labelled_repeats,
            "student_train_images": r.student_train_images,
            "student_init": settings.init,
            "student_augment": settings.augment,
            "student_val_accuracy": r.student_val_accuracy,
            "predict_seconds": r.predict_seconds,
            "student_train_seconds": r.result.train_seconds + r.result.feature_seconds,
        })
    return {
        "pool": {
            "drawn_from": POOL_DESCRIPTION,
            "available": available,
            "used": len(pool),
            "indices_sha256": _indices_hash(pool),
            "labels_given_to_training": False,
        },
        "settings": {k: v for k, v in asdict(settings).items() if k != "stages"},
        "teacher_val_accuracy": outcome.teacher_val_accuracy,
        "rounds": rounds,
    }


def diagnostics(outcome: Outcome, pool_labels: np.ndarray, classes: list[str]) -> dict:
    """For the reader only, computed after training against the pool's withheld labels: how often the
    teacher's label was right on the whole pool, on the kept pseudo-labels (overall and per pseudo-label
    class), which true classes the kept images came from, and how accuracy falls as more of the pool is
    kept (most confident first)."""
    pool_labels = np.asarray(pool_labels)
    rounds = []
    for r in outcome.rounds:
        confidence, predicted = (t.numpy() for t in r.probabilities.max(1))
        right = predicted == pool_labels
        kept_right = right[r.kept]
        order = np.argsort(-confidence, kind="stable")
        rounds.append({
            "round": r.round,
            "teacher_pool_accuracy": float(right.mean()) if len(right) else None,
            "pseudo_label_accuracy": float(kept_right.mean()) if len(kept_right) else None,
            "pseudo_label_accuracy_per_class": {
                name: float(kept_right[r.pseudo_labels == c].mean()) if (r.pseudo_labels == c).any() else None
                for c, name in enumerate(classes)},
            "kept_true_class_counts": {name: int((pool_labels[r.kept] == c).sum()) for c, name in enumerate(classes)},
            "accuracy_by_share_kept": [
                {"share": share, "images": k, "accuracy": float(right[order[:k]].mean())}
                for share in COVERAGE_SHARES for k in [max(1, round(share * len(right)))] if len(right)],
        })
    return {
        "note": "computed after training against the pool's withheld labels, for the reader only; the training "
                "code never received them",
        "rounds": rounds,
    }


def _indices_hash(indices: np.ndarray) -> str:
    from cifar_tl.data.subsets import indices_hash

    return indices_hash(indices)
