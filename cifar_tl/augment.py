"""Whole-batch preprocessing and augmentation on the device: no per-image Python, no PIL in the loop.

Images stay uint8 (N, H, W, 3) in memory; a batch is turned into normalised float NCHW at the
model's input size in one resize (or one `grid_sample` that also crops, scales and flips).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _normalise(x: torch.Tensor, mean, std) -> torch.Tensor:
    mean = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def to_float_nchw(batch_uint8: torch.Tensor) -> torch.Tensor:
    return batch_uint8.permute(0, 3, 1, 2).float().div_(255)


def prepare(batch_uint8: torch.Tensor, size: int, mean, std) -> torch.Tensor:
    """uint8 (N, H, W, 3) to normalised float (N, 3, size, size): bilinear resize, no augmentation."""
    x = to_float_nchw(batch_uint8)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=x.shape[-1] > size)
    return _normalise(x, mean, std)


def random_crop_flip(
    batch_uint8: torch.Tensor,
    size: int,
    mean,
    std,
    generator: torch.Generator | None = None,
    scale: tuple[float, float] = (0.7, 1.0),
    max_shift: float = 0.125,
    flip: bool = True,
) -> torch.Tensor:
    """Random crop (a zoom in `scale` of the side, shifted by up to `max_shift` of it), random
    horizontal flip, and resize to `size`, for the whole batch in one `grid_sample`.

    Outside the image, the border pixels repeat (as a padded random crop would with edge padding).
    """
    x = to_float_nchw(batch_uint8)
    n = x.shape[0]
    dev = x.device

    def uniform(lo, hi):
        return torch.rand(n, generator=generator, device="cpu").mul(hi - lo).add(lo).to(dev)

    zoom = uniform(*scale)  # fraction of the side that the crop covers
    room = (1 - zoom) + 2 * max_shift  # how far the centre may move, in normalised [-1, 1] units / 2
    tx, ty = uniform(-1, 1) * room, uniform(-1, 1) * room
    sign = torch.where(uniform(0, 1) < 0.5, -1.0, 1.0) if flip else torch.ones(n, device=dev)
    theta = torch.zeros(n, 2, 3, device=dev)
    theta[:, 0, 0] = zoom * sign
    theta[:, 1, 1] = zoom
    theta[:, 0, 2] = tx
    theta[:, 1, 2] = ty
    grid = F.affine_grid(theta, (n, 3, size, size), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return _normalise(x, mean, std)
