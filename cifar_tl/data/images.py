"""One image file as an array: any format and size Pillow reads, refused with a clear message when it is not an
image, is cut short or claims too many pixels (checked in its header, before decoding)."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cifar_tl.core.errors import UserError


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
