"""Checkpoints: a trained model in one file with what it needs to be used again, and predictions.

A checkpoint holds the backbone's name, the class names, the preprocessing (mean, std, input size),
the weights and a short summary of the run that made it. Loading one needs no download: the
architecture is rebuilt without pretrained weights and the saved state dict is loaded into it.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .augment import prepare
from .backbones import BACKBONES, Classifier, create_model
from .data import square_crop
from .errors import UserError
from .files import save_torch

FORMAT = "cifar-tl-checkpoint"
VERSION = 1
HOW_TO_MAKE = "make one with `cifar-tl train ... --save-checkpoint PATH`"
_REQUIRED = ("format", "version", "backbone", "classes", "mean", "std", "image_size", "state_dict", "record")


def save_checkpoint(path: str | os.PathLike, model: Classifier, classes, image_size: int, record: dict) -> Path:
    """Write `model` with its classes, preprocessing and a summary of `record` to `path`, atomically."""
    classes = [str(c) for c in classes]
    if len(classes) != model.head.out_features:
        raise ValueError(f"{len(classes)} class names for a head with {model.head.out_features} outputs")
    metrics, data = record.get("metrics", {}), record.get("data", {})
    image_shape = data.get("image_shape") or [image_size]
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "backbone": model.name,
        "classes": classes,
        "mean": [float(v) for v in model.mean],
        "std": [float(v) for v in model.std],
        "image_size": int(image_size),
        # The side of the stored training images (32 for CIFAR-10), which `prepare` resized to
        # image_size: a new image is brought to this side first, so it looks as the training data did.
        "source_image_size": int(image_shape[0]),
        "state_dict": {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()},
        "record": {
            "name": record.get("name"),
            "test_accuracy": metrics.get("test_accuracy"),
            "test_images": metrics.get("test_images"),
            "data_name": data.get("name"),
            "data_checksum": data.get("checksum"),
        },
    }
    return save_torch(path, payload)  # atomic; a full disk is one line naming the file and its size


class NotACheckpoint(UserError):
    """A file that is not a checkpoint this cifar-tl can load; `why` says what is wrong with it, in a few words."""

    def __init__(self, path: Path, why: str):
        self.path, self.why = path, why
        super().__init__(f"{path} is not a cifar-tl checkpoint ({why}); {HOW_TO_MAKE}")


def _not_a_checkpoint(path: Path, why: str) -> NotACheckpoint:
    return NotACheckpoint(path, why)


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message, without terminal colour codes, at most 200 characters."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    return (text.splitlines()[0] if text else exc.__class__.__name__)[:200]


def _is_torch_file(path: Path) -> bool:
    """A torch.save file: a zip archive (the default since torch 1.6) or a legacy pickle."""
    with open(path, "rb") as f:
        head = f.read(2)
    return zipfile.is_zipfile(path) or (len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5)


def load_checkpoint(path: str | os.PathLike) -> tuple[Classifier, dict]:
    """The model (on the CPU, in eval mode) and the checkpoint's information (everything but the
    weights, plus `path` and `file_bytes`). Anything that is not a checkpoint is a `UserError`."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist; {HOW_TO_MAKE}")
    if not path.is_file():
        raise _not_a_checkpoint(path, "not a file")
    try:
        if not _is_torch_file(path):
            raise _not_a_checkpoint(path, "not a PyTorch file")
        # weights_only: the payload is plain containers, strings, numbers and tensors, so nothing
        # in a checkpoint needs (or may run) arbitrary unpickling.
        with warnings.catch_warnings():  # torch warns of pickle protocols it did not write: a hostile file's
            warnings.simplefilter("ignore", UserWarning)
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except UserError:
        raise
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        if "Weights only load failed" in str(exc):  # its pickle names functions or classes: code, not weights
            raise _not_a_checkpoint(path, "it asks to run code or build objects that a checkpoint never holds; "
                                          "refused without running any of it") from exc
        raise _not_a_checkpoint(path, f"PyTorch cannot read it: {_first_line(exc)}") from exc
    if not isinstance(payload, dict):
        raise _not_a_checkpoint(path, f"it holds a {type(payload).__name__}, not a checkpoint's dict")
    if payload.get("format") != FORMAT:
        raise _not_a_checkpoint(path, f"no {FORMAT!r} format marker")
    missing = [key for key in _REQUIRED if key not in payload]
    if missing:
        raise _not_a_checkpoint(path, f"missing {', '.join(missing)}")
    if payload["version"] != VERSION:
        raise _not_a_checkpoint(path, f"format version {payload['version']!r}; this cifar-tl reads version {VERSION}")
    backbone, classes, size = payload["backbone"], payload["classes"], payload["image_size"]
    if backbone not in BACKBONES:
        raise _not_a_checkpoint(path, f"unknown backbone {backbone!r}")
    if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) for c in classes):
        raise _not_a_checkpoint(path, "its class names are not a list of at least two strings")
    if not isinstance(size, int) or size < 1:
        raise _not_a_checkpoint(path, f"image size {size!r} is not a positive whole number")

    model = create_model(backbone, len(classes), pretrained=False)
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise _not_a_checkpoint(path, f"its weights do not fit {backbone}: {_first_line(exc)}") from exc
    model.eval()
    info = {key: value for key, value in payload.items() if key != "state_dict"}
    info["source_image_size"] = int(payload.get("source_image_size") or size)
    info["path"] = str(path)
    info["file_bytes"] = path.stat().st_size
    info["parameters"] = model.parameter_counts()["total"]
    return model, info


# The most pixels an image may have (checked in its header, before it is decoded): 64 megapixels, more than
# any camera's photo, and about 200 MB once decoded. Beyond it, a file is refused rather than decoded.
MAX_IMAGE_PIXELS = 64_000_000


def _too_many_pixels(name: str, claimed: str, max_pixels: int) -> UserError:
    return UserError(f"image {name} claims {claimed} pixels, more than the {max_pixels / 1e6:.0f} megapixels this "
                     "program decodes; give a smaller image")


def read_image(path: str | os.PathLike, name: str | None = None, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """An image file of any size and format Pillow reads, as uint8 RGB (H, W, 3). Anything else (no such file,
    an empty file, not an image, cut short, more than `max_pixels` pixels) is a `UserError` that calls the
    file `name` (default: its path)."""
    path = Path(path)
    name = name or str(path)
    if not path.exists():
        raise UserError(f"image {name} does not exist")
    if not path.is_file():
        raise UserError(f"image {name} is not a file")
    how = "give a JPEG, PNG or another format Pillow reads"
    try:
        if path.stat().st_size == 0:
            raise UserError(f"image {name} is empty (0 bytes); {how}")
        with warnings.catch_warnings():  # Pillow warns of large images; the check below refuses them
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)  # reads the header only
        with image:
            width, height = image.size
            if width * height > max_pixels:
                raise _too_many_pixels(name, f"{width:,} x {height:,}", max_pixels)
            return np.array(ImageOps.exif_transpose(image).convert("RGB"), dtype=np.uint8)
    except Image.DecompressionBombError as exc:  # Pillow refuses even to open it: far beyond max_pixels
        claimed = re.search(r"\((\d+) pixels\)", str(exc))
        raise _too_many_pixels(name, f"{int(claimed.group(1)):,}" if claimed else "too many", max_pixels) from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        why = ("not an image Pillow knows" if isinstance(exc, UnidentifiedImageError)
               else "permission denied" if isinstance(exc, PermissionError)
               else f"cut short or damaged: {exc.__class__.__name__}")
        raise UserError(f"image {name} could not be read as an image ({why}); {how}") from exc


def model_input(images: list[np.ndarray], info: dict) -> torch.Tensor:
    """uint8 RGB images of any sizes to normalised model input, as the training images were made:
    a centre square at the stored training images' side, then `prepare` to the model's input size."""
    side = info.get("source_image_size") or info["image_size"]
    batch = torch.from_numpy(np.stack([square_crop(image, side) for image in images]))
    return prepare(batch, info["image_size"], info["mean"], info["std"])


@torch.inference_mode()
def predict_arrays(model: Classifier, info: dict, images: list[np.ndarray], top_k: int = 3,
                   batch_size: int = 32) -> list[list[dict]]:
    """For each uint8 RGB image, the `top_k` classes (clipped to the class count) as
    [{"label", "probability"}], most probable first."""
    classes = info["classes"]
    k = max(1, min(int(top_k), len(classes)))
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = model_input(images[start : start + batch_size], info)
        probabilities = torch.softmax(model(x).float(), dim=1)
        values, indices = probabilities.topk(k, dim=1, sorted=True)
        for row_values, row_indices in zip(values.tolist(), indices.tolist()):
            out.append([{"label": classes[i], "probability": p} for p, i in zip(row_values, row_indices)])
    return out


def predict_images(model: Classifier, info: dict, paths, top_k: int = 3) -> list[dict]:
    """[{"image": path, "predictions": [{"label", "probability"}, ...]}] for each image file."""
    paths = [Path(p) for p in paths]
    images = [read_image(p) for p in paths]  # every file is checked before any work is done
    predictions = predict_arrays(model, info, images, top_k)
    return [{"image": str(p), "predictions": preds} for p, preds in zip(paths, predictions)]
