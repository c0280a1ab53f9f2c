"""A scikit-learn linear probe: logistic regression fitted on a frozen backbone's pooled features, the
standard tool beside the library's own torch head (the `linear_probe` recipe) on the same features."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from cifar_tl.core.device import eval_batch_size, pick_device
from cifar_tl.training.evaluate import compute_outputs


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


def probe_chosen_by_cross_validation(train, test, grid, folds: int = 5, seed: int = 0) -> dict:
    """The same choice of C without a validation split: by stratified `folds`-fold cross-validation over the
    labelled training features alone (what a reader who has only those labels can do), then one probe on all
    of them at the chosen C, and the test set read once, for it.

    `train` and `test` are (features, labels) pairs. Returns each C's mean accuracy over the held-out folds, the
    C chosen (the first of a tie) and its test accuracy; None when a class has a single image. With fewer images
    than `folds` in a class, that many folds."""
    features, labels = np.asarray(train[0]), np.asarray(train[1])
    folds = min(folds, int(np.unique(labels, return_counts=True)[1].min()))  # each fold holds every class
    if folds < 2:
        return None  # a class with one labelled image: nothing to cross-validate on
    search = GridSearchCV(make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)),
                          {"logisticregression__C": list(grid)}, scoring="accuracy",
                          cv=StratifiedKFold(folds, shuffle=True, random_state=seed), refit=True)
    search.fit(features, labels)  # refit: the chosen C on every labelled image
    test_features, test_labels = test
    return {
        "folds": folds,
        "cv_accuracy_by_C": [float(a) for a in search.cv_results_["mean_test_score"]],
        "C": float(search.best_params_["logisticregression__C"]),
        "test_accuracy": float(accuracy_score(np.asarray(test_labels), search.predict(np.asarray(test_features)))),
    }
