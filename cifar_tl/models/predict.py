"""Prediction with a trained model: image files or arrays in, the most probable classes out, each image
prepared as the training images were."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cifar_tl.data.augment import prepare
from cifar_tl.data.images import read_image
from cifar_tl.data.sources import square_crop
from cifar_tl.models.backbones import Classifier


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
