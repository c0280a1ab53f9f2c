"""cifar_tl.core.metrics: scikit-learn's confusion matrix and per-class report, and the most confused pairs."""

from __future__ import annotations

import numpy as np
import pytest

from cifar_tl.core import metrics

CLASSES = ["cat", "dog", "ship"]


def test_label_metrics_count_every_class_even_one_never_seen():
    labels = np.array([0, 0, 0, 1, 1, 1])
    predictions = np.array([0, 0, 1, 1, 1, 0])
    result = metrics.label_metrics(labels, predictions, 3)
    assert result["confusion_matrix"] == [[2, 1, 0], [1, 2, 0], [0, 0, 0]]  # class 2 occurs nowhere
    assert result["accuracy"] == pytest.approx(4 / 6)
    assert result["per_class_accuracy"] == pytest.approx([2 / 3, 2 / 3, 0.0])
    assert isinstance(result["confusion_matrix"][0][0], int)  # plain JSON numbers for the run record


def test_labels_from_confusion_give_the_matrix_back():
    confusion = np.array([[3, 1, 0], [0, 2, 2], [1, 0, 4]])
    labels, predictions = metrics.labels_from_confusion(confusion)
    assert len(labels) == confusion.sum()
    assert metrics.label_metrics(labels, predictions, 3)["confusion_matrix"] == confusion.tolist()


def test_per_class_table_is_precision_recall_f1_and_support():
    confusion = np.array([[3, 1, 0], [0, 2, 2], [1, 0, 4]])  # rows: true class
    table = metrics.per_class_table(confusion, CLASSES)
    assert list(table.index) == [*CLASSES, "macro avg", "weighted avg"]
    assert list(table.columns) == ["precision", "recall", "f1-score", "support"]
    assert table.loc["cat", "recall"] == pytest.approx(3 / 4)
    assert table.loc["cat", "precision"] == pytest.approx(3 / 4)
    assert table.loc["dog", "precision"] == pytest.approx(2 / 3) and table.loc["dog", "recall"] == pytest.approx(1 / 2)
    assert table.loc["dog", "f1-score"] == pytest.approx(2 * (2 / 3) * (1 / 2) / (2 / 3 + 1 / 2))
    assert table["support"].tolist() == [4, 4, 5, 13, 13]
    never_predicted = metrics.per_class_table(np.array([[2, 0], [2, 0]]), ["a", "b"])
    assert never_predicted.loc["b", "precision"] == 0.0  # no warning, no NaN


def test_hardest_pairs_count_both_directions():
    confusion = np.array([[5, 2, 0], [3, 5, 1], [0, 1, 5]])
    assert metrics.hardest_pairs(confusion, CLASSES, k=2) == [("cat – dog", 5), ("dog – ship", 2)]
