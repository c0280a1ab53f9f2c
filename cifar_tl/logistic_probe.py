"""A scikit-learn linear probe: logistic regression fitted on a frozen backbone's pooled features, the
standard tool beside the library's own torch head (the `linear_probe` recipe) on the same features."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from .train import compute_outputs, eval_batch_size, pick_device


def probe_features(model, images, size: int, device: str | None = None, batch_size: int | None = None,
                   progress: bool = False) -> np.ndarray:
    """The frozen body's pooled features (N, feature_dim, float32) of uint8 images (N, H, W, 3), each fed
    at `size`x`size` and normalised with the backbone's mean and std, in eval mode (BatchNorm as stored)."""
    device = pick_device(device)
    images = torch.as_tensor(np.asarray(images))
    features = compute_outputs(model, images, size, batch_size or eval_batch_size(device), device, features=True,
                               progress=progress, desc="features")
    return features.numpy()


def sklearn_probe(train_feats, y_train, test_feats, y_test, C: float = 1.0, max_iter: int = 1000
                  ) -> tuple[float, Pipeline]:
    """Fit logistic regression (L2 penalty of strength 1/C, on standardised features) to the training
    features and labels; return its accuracy on the held-out features given (validation or test) and the
    fitted pipeline."""
    model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
    model.fit(np.asarray(train_feats), np.asarray(y_train))
    accuracy = float(accuracy_score(np.asarray(y_test), model.predict(np.asarray(test_feats))))
    return accuracy, model


def probe_chosen_on_validation(train, val, test, grid) -> dict:
    """One probe per C in `grid` fitted on the training features, the one with the best validation accuracy
    kept (the first of a tie), and the test set read once, for that probe alone.

    `train`, `val`, `test` are (features, labels) pairs. Returns what a run record stores."""
    fitted = {c: sklearn_probe(*train, *val, C=c) for c in grid}
    chosen = max(grid, key=lambda c: fitted[c][0])  # max keeps the first of equal accuracies
    test_features, test_labels = test
    predictions = fitted[chosen][1].predict(np.asarray(test_features))
    return {
        "C_grid": list(grid),
        "val_accuracy_by_C": [fitted[c][0] for c in grid],
        "C": chosen,
        "val_accuracy": fitted[chosen][0],
        "test_accuracy": float(accuracy_score(np.asarray(test_labels), predictions)),
    }
