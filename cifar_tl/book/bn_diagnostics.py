"""BatchNorm in a model: what it learns (scale and shift) and what it only measures (running statistics),
and how far a batch of new images sits from the statistics it stored."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn

from cifar_tl.data.augment import prepare


def batchnorm_summary(model) -> pd.DataFrame:
    """Per layer group of a `Classifier`: BatchNorm layers, their learnable parameters (scale and shift,
    trained by gradients) and their running statistics (mean and variance: measured, not trained)."""
    rows = []
    for name, modules in model.layer_groups():
        layers = [m for module in modules for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        rows.append({
            "group": name,
            "BatchNorm layers": len(layers),
            "learnable (γ, β)": sum(m.weight.numel() + m.bias.numel() for m in layers if m.affine),
            "running statistics (μ, σ²)": sum(m.running_mean.numel() + m.running_var.numel() for m in layers
                                              if m.track_running_stats),
            "all parameters": sum(p.numel() for m in modules for p in m.parameters()),
        })
    return pd.DataFrame(rows).set_index("group")


def batchnorm_shift(model, images, image_size: int) -> pd.DataFrame:
    """How far a batch's own statistics sit from the stored (ImageNet) ones, BatchNorm layer by layer.

    `images` is a uint8 batch (N, H, W, 3). The model runs in eval mode (normalising with the stored
    statistics, as frozen BatchNorm does) while each layer's input statistics are measured. Per layer:
    the mean |batch mean − stored mean| in units of the stored standard deviation, and the median ratio
    of the batch variance to the stored variance (1 would mean the data looks like ImageNet to it).
    """
    found, hooks = [], []
    for group, modules in model.layer_groups():
        for module in modules:
            for sub in module.modules():
                if isinstance(sub, nn.modules.batchnorm._BatchNorm) and sub.track_running_stats:
                    found.append((group, sub))

    stats: dict[int, tuple] = {}

    def hook(index):
        def measure(module, inputs, output):
            x = inputs[0].float()
            dims = [0, 2, 3] if x.ndim == 4 else [0]
            stats[index] = (x.mean(dims), x.var(dims, unbiased=False))
        return measure

    for i, (_, layer) in enumerate(found):
        hooks.append(layer.register_forward_hook(hook(i)))
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            x = prepare(torch.as_tensor(np.asarray(images)), image_size, model.mean, model.std)
            model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    rows = []
    for i, (group, layer) in enumerate(found):
        mean, var = stats[i]
        run_mean, run_var = layer.running_mean.float(), layer.running_var.float()
        rows.append({
            "layer": i + 1,
            "group": group,
            "channels": int(run_mean.numel()),
            "mean shift (stored σ)": float(((mean - run_mean).abs() / (run_var + layer.eps).sqrt()).mean()),
            "variance ratio (median)": float((var / (run_var + layer.eps)).median()),
        })
    return pd.DataFrame(rows).set_index("layer")
