"""A real class-folder dataset other than CIFAR-10, for the book's guide to the reader's own images.

The handwritten digits that scikit-learn ships (`sklearn.datasets.load_digits`: 1,797 greyscale images of
8×8 pixels, ten classes) are written out as `train/<digit>/*.png` and `test/<digit>/*.png`, exactly the layout a
reader's own folder of images has, so `cifar-tl train --data DIR` reads them as it would the reader's. Nothing is
downloaded: the images come with scikit-learn.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

DIGITS_NAME = "UCI handwritten digits (8×8, as shipped with scikit-learn)"
DIGITS_LICENCE = (
    "Optical Recognition of Handwritten Digits, E. Alpaydin and C. Kaynak (1998), UCI Machine Learning "
    "Repository, https://doi.org/10.24432/C50P49, licensed under Creative Commons Attribution 4.0 (CC BY 4.0); "
    "the copy bundled with scikit-learn (sklearn.datasets.load_digits), BSD-3-Clause. Written here unchanged "
    "(grey levels 0-16 scaled to 0-255) as one PNG per image."
)


def digits_split(test_per_class: int = 40) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images uint8 (N, 8, 8), labels, is_test): per class, the last `test_per_class` images in the order
    scikit-learn gives them are test (a fixed split, no seed)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).clip(0, 255).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    is_test = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        is_test[members[-test_per_class:]] = True
    return images, labels, is_test


def write_digits_folders(root: Path, test_per_class: int = 40) -> Path:
    """Write the digits as class folders under `root` (`train/<digit>/NNNN.png`, `test/<digit>/NNNN.png`, and a
    LICENCE.txt beside them) once; return `root`. An existing complete copy is left as it is."""
    from PIL import Image

    root = Path(root)
    images, labels, is_test = digits_split(test_per_class)
    done = root / ".complete"
    if done.exists():
        return root
    for i, (image, label, test) in enumerate(zip(images, labels, is_test)):
        folder = root / ("test" if test else "train") / f"digit_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).convert("RGB").save(folder / f"{i:04d}.png")
    (root / "LICENCE.txt").write_text(DIGITS_NAME + "\n\n" + DIGITS_LICENCE + "\n")
    done.write_text("")
    return root


def folder_counts(root: Path) -> pd.DataFrame:
    """Images per class and split of a class-folder dataset, as a table (what a reader checks first)."""

    root = Path(root)
    counts = {}
    for split in ("train", "test", "val"):
        if (root / split).is_dir():
            counts[split] = {c.name: sum(1 for f in c.iterdir() if f.is_file()) for c in sorted((root / split).iterdir())
                             if c.is_dir()}
    table = pd.DataFrame(counts).fillna(0).astype(int)
    table.index.name = "class"
    return table
