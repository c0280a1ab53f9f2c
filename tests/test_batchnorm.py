"""cifar_tl.book.bn_diagnostics: what BatchNorm learns and what it only measures, on a tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cifar_tl.book import bn_diagnostics
from cifar_tl.models.backbones import create_model


def test_batchnorm_summary_separates_learned_scales_from_measured_statistics():
    model = create_model("simple_cnn", 3, pretrained=False)
    summary = bn_diagnostics.batchnorm_summary(model)
    assert list(summary.index) == model.group_names()
    assert summary.loc["block1", "BatchNorm layers"] == 2
    assert summary.loc["block1", "learnable (γ, β)"] == 2 * (32 + 32)
    assert summary.loc["block1", "running statistics (μ, σ²)"] == 2 * (32 + 32)
    assert summary.loc["head", "BatchNorm layers"] == 0
    assert summary["all parameters"].sum() == sum(p.numel() for p in model.parameters())


def test_batchnorm_shift_is_zero_when_the_stored_statistics_are_the_batch_own():
    torch.manual_seed(0)
    model = create_model("simple_cnn", 3, pretrained=False)
    images = np.random.default_rng(0).integers(0, 256, size=(16, 32, 32, 3), dtype=np.uint8)
    fresh = bn_diagnostics.batchnorm_shift(model, images, 32)
    assert len(fresh) == 6  # fresh layers store μ=0, σ²=1, far from what this batch gives them
    assert abs(fresh["variance ratio (median)"].iloc[0] - 1) > 0.1
    # One training-mode pass with a cumulative average stores exactly this batch's statistics.
    from cifar_tl.data.augment import prepare
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(prepare(torch.as_tensor(images), 32, model.mean, model.std))
    own = bn_diagnostics.batchnorm_shift(model, images, 32)
    assert own["mean shift (stored σ)"].max() < 1e-3
    assert own["variance ratio (median)"].to_numpy() == pytest.approx(1.0, abs=0.01)
    assert model.training  # the mode it was in is restored
