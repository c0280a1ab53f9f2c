"""cifar_tl.book.plots: figures come back with an opaque white background."""

from __future__ import annotations

import matplotlib
import numpy as np

from cifar_tl.book import plots


def _record(seed: int, seconds: float, accuracy: float) -> dict:
    return {"config": {"seed": seed}, "metrics": {"test_accuracy": accuracy}, "timing": {"total_seconds": seconds}}


def test_cost_scatter_is_opaque_white():
    runs = {"scratch": [_record(s, 10.0 + s, 0.3) for s in (0, 1)], "probe": [_record(s, 2.0, 0.6) for s in (0, 1)]}
    fig = plots.cost_scatter(runs)
    assert matplotlib.colors.to_rgba(fig.get_facecolor()) == (1.0, 1.0, 1.0, 1.0)
    matplotlib.pyplot.close(fig)


def test_size_grid_titles_each_size_and_marks_wrong_predictions_in_red():
    images = np.zeros((2, 32, 32, 3), dtype=np.uint8)
    predictions = {32: np.array([0, 1]), 64: np.array([0, 0])}
    fig = plots.size_grid(images, [0, 1], ["cat", "dog"], predictions, trained_size=32)
    axes = np.array(fig.axes).reshape(2, 2)
    assert axes[0, 0].get_title() == "32px (trained)\n→ cat"
    assert axes[1, 1].get_title() == "64px\n→ cat"
    assert matplotlib.colors.to_rgba(axes[1, 1].title.get_color()) == matplotlib.colors.to_rgba("red")
    assert matplotlib.colors.to_rgba(axes[1, 0].title.get_color()) == matplotlib.colors.to_rgba("black")
    matplotlib.pyplot.close(fig)
