"""Whole-batch preprocessing and augmentation on the device: no per-image Python, no PIL in the loop.

Images stay uint8 (N, H, W, 3) in memory; a batch is turned into normalised float NCHW at the
model's input size in one resize (or one `grid_sample` that also crops, scales and flips).
"""

from __future__ import annotations

import numpy as np
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
    x = _crop_flip(batch_uint8, size, generator, scale, max_shift, flip)
    return _normalise(x, mean, std)


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator | None, device) -> torch.Tensor:
    """n draws from U(lo, hi), made on the CPU (so a seeded generator gives the same on every device)."""
    return torch.rand(n, generator=generator, device="cpu").mul(hi - lo).add(lo).to(device)


def _crop_flip(batch_uint8, size, generator, scale=(0.7, 1.0), max_shift=0.125, flip=True) -> torch.Tensor:
    """`random_crop_flip` before normalisation: float NCHW in [0, 1]."""
    x = to_float_nchw(batch_uint8)
    n = x.shape[0]
    dev = x.device

    def uniform(lo, hi):
        return _uniform(n, lo, hi, generator, dev)

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
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


# -- strong augmentation: crop/flip, colour jitter and cutout on whole batches ---------------------------------


def _grey(x: torch.Tensor) -> torch.Tensor:
    """Luma (ITU-R 601) of float NCHW RGB images: (N, 1, H, W)."""
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def colour_jitter(x: torch.Tensor, generator: torch.Generator | None = None, brightness: float = 0.4,
                  contrast: float = 0.4, saturation: float = 0.4) -> torch.Tensor:
    """Scale each image's brightness, contrast and saturation by its own factor in [1 - s, 1 + s].

    `x` is float NCHW in [0, 1]; so is the result (clamped).
    """
    n = x.shape[0]

    def factor(strength):
        return _uniform(n, 1 - strength, 1 + strength, generator, x.device).view(n, 1, 1, 1)

    b, c, s = factor(brightness), factor(contrast), factor(saturation)
    x = (x * b).clamp(0, 1)
    mean = _grey(x).mean(dim=(2, 3), keepdim=True)
    x = ((x - mean) * c + mean).clamp(0, 1)
    grey = _grey(x)
    return ((x - grey) * s + grey).clamp(0, 1)


def cutout(x: torch.Tensor, generator: torch.Generator | None = None, fraction: float = 0.5,
           fill: float = 0.5) -> torch.Tensor:
    """Paint a square of `fraction` of the side in grey (`fill`) into every image, centred at random
    (clipped at the border, so near an edge less is hidden). `x` is float NCHW in [0, 1]."""
    n, _, h, w = x.shape
    side_h, side_w = max(1, round(h * fraction)), max(1, round(w * fraction))
    top = (_uniform(n, 0, h, generator, x.device).floor() - side_h // 2).view(n, 1, 1)
    left = (_uniform(n, 0, w, generator, x.device).floor() - side_w // 2).view(n, 1, 1)
    rows = torch.arange(h, device=x.device, dtype=x.dtype).view(1, h, 1)
    cols = torch.arange(w, device=x.device, dtype=x.dtype).view(1, 1, w)
    inside = (rows >= top) & (rows < top + side_h) & (cols >= left) & (cols < left + side_w)
    return x.masked_fill(inside.unsqueeze(1), fill)


def strong_augment(batch_uint8: torch.Tensor, size: int, mean, std, generator: torch.Generator | None = None
                   ) -> torch.Tensor:
    """The student's augmentation in self-training: a random crop and flip (as `random_crop_flip`),
    then colour jitter (brightness, contrast, saturation ±40%), then cutout of a square half the
    side; one pass over the whole batch on its device. uint8 (N, H, W, 3) in, normalised float
    (N, 3, size, size) out."""
    x = _crop_flip(batch_uint8, size, generator)
    x = colour_jitter(x, generator)
    x = cutout(x, generator)
    return _normalise(x, mean, std)


# The recipes' augmentations ("none" aside): name -> f(batch_uint8, size, mean, std, generator).
AUGMENTERS = {"crop_flip": random_crop_flip, "strong": strong_augment}


# -- mixing: MixUp and CutMix, on whole batches ------------------------------------------------------------


def mixup(x: torch.Tensor, targets: torch.Tensor, lam: float, perm: torch.Tensor):
    """Blend every image with `x[perm]`: `lam * x + (1 - lam) * x[perm]`, targets likewise.

    `targets` are probabilities (N, classes); the mixed targets still sum to one.
    """
    return lam * x + (1 - lam) * x[perm], lam * targets + (1 - lam) * targets[perm]


def cutmix_box(height: int, width: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A box (top, bottom, left, right) covering about `1 - lam` of the image, centred at random
    and clipped to the image (so its area can be smaller; `cutmix` uses the area it really has)."""
    cut = np.sqrt(1.0 - lam)
    h, w = int(round(height * cut)), int(round(width * cut))
    cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
    top, bottom = np.clip([cy - h // 2, cy - h // 2 + h], 0, height)
    left, right = np.clip([cx - w // 2, cx - w // 2 + w], 0, width)
    return int(top), int(bottom), int(left), int(right)


def cutmix(x: torch.Tensor, targets: torch.Tensor, lam: float, perm: torch.Tensor, rng: np.random.Generator):
    """Paste a box of `x[perm]` into every image; targets mix by the pasted area's share.

    Returns the images, the targets and the λ actually used (1 - box area / image area).
    """
    top, bottom, left, right = cutmix_box(x.shape[-2], x.shape[-1], lam, rng)
    x = x.clone()
    x[:, :, top:bottom, left:right] = x[perm][:, :, top:bottom, left:right]
    lam = 1.0 - (bottom - top) * (right - left) / (x.shape[-2] * x.shape[-1])
    return x, lam * targets + (1 - lam) * targets[perm], lam


def mix_batch(x, labels, n_classes, mixup_alpha, cutmix_alpha, rng: np.random.Generator, generator=None):
    """MixUp or CutMix (one of them per batch, at random, when both are on) with λ ~ Beta(α, α).

    Returns the images and soft targets (N, classes) that sum to one.
    """
    targets = F.one_hot(labels, n_classes).float()
    choices = [kind for kind, alpha in (("mixup", mixup_alpha), ("cutmix", cutmix_alpha)) if alpha > 0]
    if not choices:
        return x, targets
    kind = choices[int(rng.integers(len(choices)))]
    alpha = mixup_alpha if kind == "mixup" else cutmix_alpha
    lam = float(rng.beta(alpha, alpha))
    perm = torch.randperm(len(x), generator=generator).to(x.device)
    if kind == "mixup":
        return mixup(x, targets, lam, perm)
    x, targets, _ = cutmix(x, targets, lam, perm, rng)
    return x, targets


# -- test-time augmentation ---------------------------------------------------------------------------------

TTA_MODES = ("none", "flip", "flip_shift")


def tta_views(x: torch.Tensor, mode: str) -> list[torch.Tensor]:
    """The views of a normalised batch that test-time augmentation averages.

    "flip": the batch and its mirror image. "flip_shift": those two, plus the batch shifted by 1/16
    of its side left, right, up and down (edge pixels repeat), six views in all.
    """
    if mode == "none":
        return [x]
    views = [x, torch.flip(x, dims=[-1])]
    if mode == "flip_shift":
        s = max(1, x.shape[-1] // 16)
        padded = F.pad(x, (s, s, s, s), mode="replicate")
        h, w = x.shape[-2:]
        for dy, dx in ((0, -s), (0, s), (-s, 0), (s, 0)):
            views.append(padded[..., s + dy : s + dy + h, s + dx : s + dx + w])
    return views
