"""Class-balanced subsets: the labelled training images and the validation split a seed draws, and the capped
test split. A seed names the same subset on every machine."""

from __future__ import annotations

import hashlib

import numpy as np

from cifar_tl.core.errors import UserError


# The largest subset seed: torch and NumPy take seeds of up to 64 bits, and self-training adds small numbers.
MAX_SEED = 2**32 - 1


def balanced_subset(
    labels: np.ndarray, per_class: int, val_per_class: int, seed: int, classes: list[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Draw `per_class` training and `val_per_class` validation indices per class, disjoint, with `seed`.

    NumPy's PCG64 stream is the same on every platform, so a seed names the same subset everywhere.
    """
    if per_class < 1 or val_per_class < 0:
        raise UserError(f"--per-class must be at least 1 (got {per_class}); validation per class at least 0")
    rng = np.random.Generator(np.random.PCG64(seed))
    n_classes = int(labels.max()) + 1 if len(labels) else 0
    train, val = [], []
    for c in range(n_classes):
        pool = np.flatnonzero(labels == c)
        needed = per_class + val_per_class
        if len(pool) < needed:
            name = classes[c] if classes else str(c)
            raise UserError(
                f"--per-class {per_class} plus {val_per_class} validation images needs {needed} training images "
                f"per class, but class {name!r} has {len(pool)}; ask for fewer"
            )
        drawn = rng.permutation(pool)
        train.append(drawn[:per_class])
        val.append(drawn[per_class:needed])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def capped_test(labels: np.ndarray, test_limit: int | None) -> np.ndarray:
    """All test indices, or a class-balanced `test_limit` of them (the same for every run and seed)."""
    if test_limit is None or test_limit >= len(labels):
        return np.arange(len(labels))
    n_classes = int(labels.max()) + 1
    if test_limit < n_classes:
        raise UserError(f"--test-limit {test_limit} is below the number of classes ({n_classes})")
    rng = np.random.Generator(np.random.PCG64(0))
    per_class = test_limit // n_classes
    picks = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in range(n_classes)]
    return np.sort(np.concatenate(picks))


def indices_hash(indices: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(indices, dtype=np.int64).tobytes()).hexdigest()[:16]
