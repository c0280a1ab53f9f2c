"""Classification metrics from true labels and predictions (or logits), through scikit-learn: accuracy, loss,
per-class accuracy, the confusion matrix, a per-class precision/recall/F1 report, and the most confused pairs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix


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


def label_metrics(labels, predictions, n_classes: int) -> dict:
    """Accuracy, per-class accuracy (each class's recall) and the confusion matrix (rows: true class,
    columns: predicted class, every class 0…n_classes-1 present even when it never occurs)."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    confusion = confusion_matrix(labels, predictions, labels=np.arange(n_classes))
    return {
        "accuracy": float(accuracy_score(labels, predictions)),
        "per_class_accuracy": (confusion.diagonal() / np.maximum(confusion.sum(1), 1)).tolist(),
        "confusion_matrix": confusion.tolist(),
    }


def labels_from_confusion(confusion) -> tuple[np.ndarray, np.ndarray]:
    """True labels and predictions that give this confusion matrix (one pair per counted image)."""
    m = np.asarray(confusion, dtype=int)
    true, predicted = np.indices(m.shape)
    counts = m.ravel()
    return np.repeat(true.ravel(), counts), np.repeat(predicted.ravel(), counts)


def per_class_table(confusion, classes: list[str]) -> pd.DataFrame:
    """scikit-learn's classification report as a table: precision, recall, F1 and support per class,
    then the macro and weighted averages, from a confusion matrix (one run's, or several summed)."""
    labels, predictions = labels_from_confusion(confusion)
    report = classification_report(labels, predictions, labels=np.arange(len(classes)), target_names=list(classes),
                                   output_dict=True, zero_division=0)
    rows = {name: report[name] for name in [*classes, "macro avg", "weighted avg"]}
    table = pd.DataFrame(rows).T[["precision", "recall", "f1-score", "support"]]
    table["support"] = table["support"].astype(int)
    table.index.name = "class"
    return table


def hardest_pairs(confusion, classes: list[str], k: int = 5) -> list[tuple[str, int]]:
    """The `k` class pairs most often confused, counting both directions (a→b plus b→a)."""
    m = np.asarray(confusion)
    both = m + m.T
    pairs = [(both[i, j], f"{classes[i]} – {classes[j]}") for i in range(len(classes)) for j in range(i + 1, len(classes))]
    pairs.sort(key=lambda p: (-p[0], p[1]))
    return [(name, int(count)) for count, name in pairs[:k]]
