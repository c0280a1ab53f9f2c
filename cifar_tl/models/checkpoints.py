"""Checkpoints: a trained model in one file with what it needs to be used again.

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

import torch

from cifar_tl.core.errors import UserError
from cifar_tl.core.files import save_torch
from cifar_tl.models.backbones import BACKBONES, Classifier, create_model


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
