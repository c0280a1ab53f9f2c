"""Image sources and the decoded-array cache.

A source is CIFAR-10 through torchvision (`"cifar10"`, downloaded on first use) or a class-folder
dataset: a directory or a `.tar.gz` holding `train/<class>/*` and `test/<class>/*` (or `val/<class>/*`).
Images are decoded once into uint8 arrays (N, H, W, 3) cached under `CIFAR_TL_CACHE/data`, keyed by
the source's checksum.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm.auto import tqdm

from cifar_tl.core.errors import DiskFullError, UserError
from cifar_tl.core.files import atomic_path, cache_dir, free_bytes, is_disk_full, sha256_file


TORCHVISION_SOURCE = "cifar10"


# sha256 of ../shared/data/cifar10-jpeg.tar.gz: results from it must say it is a JPEG copy.
JPEG_COPY_SHA256 = "45b041e867f5a40f79bfde38d3dd1fd511103d50068c1afecf6445e25234d4db"


JPEG_COPY_NAME = "CIFAR-10 (JPEG q75 copy)"


JPEG_COPY_NOTE = (
    "CIFAR-10 (JPEG q75 copy): every image was re-encoded as JPEG at quality 75, so accuracies are "
    "close to, not identical with, those on the original CIFAR-10"
)


# torchvision checks this md5 of cifar-10-python.tar.gz after download.
TORCHVISION_MD5 = "c58f30108f718f92721af3b95e74349a"


# What torchvision's download takes on disk: the archive (170 MB) and what it unpacks (180 MB).
TORCHVISION_BYTES = 350_000_000


# Images of mixed sizes (a user's own photos) are stored as centre-cropped squares of this side.
MIXED_STORE_SIZE = 224


SPLIT_NAMES = ("train", "test", "val")


@dataclass
class ImageDataset:
    """A whole dataset in memory: uint8 images (N, H, W, 3) and int64 labels for both splits."""

    classes: list[str]
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    identity: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.identity.get("name", "dataset")


def resolve_source(data: str | os.PathLike | None = None) -> str:
    """The source to use: `data`, else `$CIFAR_TL_DATA`, else torchvision's CIFAR-10."""
    chosen = str(data if data not in (None, "") else os.environ.get("CIFAR_TL_DATA") or TORCHVISION_SOURCE)
    # Absolute, so that a notebook running in notebooks/ finds a path given relative to the shell's folder.
    return chosen if _is_torchvision(chosen) else str(Path(chosen).expanduser().absolute())


def check_source(data: str | os.PathLike | None = None) -> str:
    """`resolve_source`, and a clear error now if it names a path that does not exist or is not a dataset."""
    source = resolve_source(data)
    if not _is_torchvision(source):
        _check_path(source)
    return source


def portable_source(source: str) -> str:
    """The source as a record names it on any machine: its file or folder name, not this machine's path."""
    return TORCHVISION_SOURCE if _is_torchvision(source) else Path(source).name


def _is_torchvision(source: str) -> bool:
    return source.lower() in (TORCHVISION_SOURCE, "torchvision")


def _check_path(source: str) -> Path:
    path = Path(source).expanduser()
    if not path.exists():
        raise UserError(
            f"data path {source!r} does not exist: pass --data (or set CIFAR_TL_DATA) to a class-folder "
            f"directory or .tar.gz, or use '{TORCHVISION_SOURCE}' to download CIFAR-10"
        )
    if path.is_file() and not path.name.endswith((".tar.gz", ".tgz", ".tar")):
        raise UserError(f"data path {source!r} is a file but not a .tar.gz/.tgz/.tar archive of class folders")
    return path


def source_checksum(source: str) -> str:
    """A checksum that changes when the source's content changes (cheap: no decoding)."""
    if _is_torchvision(source):
        return f"md5:{TORCHVISION_MD5}"
    path = _check_path(source)
    if path.is_file():
        return f"sha256:{sha256_file(path)}"
    # A directory: hash names, sizes and modification times rather than every byte of every photo.
    # An empty folder counts too (a class folder added without images must not find the earlier arrays in the
    # cache, but be refused); only empty ones, so that a folder's checksum is what it was without them.
    digest = hashlib.sha256()
    for entry in sorted(path.rglob("*")):
        if entry.is_file():
            stat = entry.stat()
            digest.update(f"{entry.relative_to(path).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        elif entry.is_dir() and not any(entry.iterdir()):
            digest.update(f"{entry.relative_to(path).as_posix()}/\0empty\n".encode())
    return f"files-sha256:{digest.hexdigest()}"


def load_dataset(data: str | os.PathLike | None = None, progress: bool = True) -> ImageDataset:
    """Load a source (see `resolve_source`) as an `ImageDataset`, decoding it only the first time."""
    source = resolve_source(data)
    if _is_torchvision(source):
        return _load_torchvision(progress)
    checksum = source_checksum(source)
    cache_file = cache_dir("data") / f"{checksum.split(':')[1][:24]}.npz"
    if cache_file.exists():
        try:
            return _read_cache(cache_file, source, checksum)
        except Exception as exc:  # a cache from an older layout or a damaged disk: decode again
            print(f"cifar-tl: ignoring unreadable data cache {cache_file} ({exc}); decoding again", file=sys.stderr)
    dataset = _decode_class_folders(Path(source).expanduser(), progress)
    arrays = (dataset.train_images, dataset.train_labels, dataset.test_images, dataset.test_labels)
    # A full disk: one line naming the cache file and its size; the dataset is decoded again next time.
    with atomic_path(cache_file, needed=sum(a.nbytes for a in arrays)) as tmp:
        with open(tmp, "wb") as f:
            np.savez(
                f,
                classes=np.array(dataset.classes),
                train_images=dataset.train_images,
                train_labels=dataset.train_labels,
                test_images=dataset.test_images,
                test_labels=dataset.test_labels,
                test_split=np.array(dataset.identity["test_split"]),
                skipped=np.array(dataset.identity["skipped_files"]),
            )
    dataset.identity = _identity(source, checksum, dataset)
    return dataset


def _read_cache(cache_file: Path, source: str, checksum: str) -> ImageDataset:
    with np.load(cache_file) as z:
        dataset = ImageDataset(
            classes=[str(c) for c in z["classes"]],
            train_images=z["train_images"],
            train_labels=z["train_labels"],
            test_images=z["test_images"],
            test_labels=z["test_labels"],
            identity={"test_split": str(z["test_split"]), "skipped_files": int(z["skipped"])},
        )
    dataset.identity = _identity(source, checksum, dataset)
    return dataset


def _identity(source: str, checksum: str, dataset: ImageDataset) -> dict:
    is_copy = checksum == f"sha256:{JPEG_COPY_SHA256}"
    previous = dataset.identity
    return {
        "source": portable_source(source),
        "kind": "class-folder archive" if Path(source).is_file() else "class-folder directory",
        "name": JPEG_COPY_NAME if is_copy else f"class folders from {Path(source).name}",
        "checksum": checksum,
        "note": JPEG_COPY_NOTE if is_copy else None,
        "classes": dataset.classes,
        "image_shape": list(dataset.train_images.shape[1:]),
        "train_pool": int(len(dataset.train_labels)),
        "test_total": int(len(dataset.test_labels)),
        "test_split": previous.get("test_split", "test"),
        "skipped_files": previous.get("skipped_files", 0),
    }


def _load_torchvision(progress: bool) -> ImageDataset:
    from torchvision.datasets import CIFAR10

    root = cache_dir("torchvision")
    try:
        train = CIFAR10(root=str(root), train=True, download=True)
        test = CIFAR10(root=str(root), train=False, download=True)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError
        if is_disk_full(exc):
            raise DiskFullError(root, needed=TORCHVISION_BYTES, free=free_bytes(root)) from exc
        raise UserError(
            f"could not download CIFAR-10 into {root} ({exc.__class__.__name__}: {exc}); offline, point "
            "--data or CIFAR_TL_DATA at a class-folder copy such as ../shared/data/cifar10-jpeg.tar.gz"
        ) from exc
    dataset = ImageDataset(
        classes=list(train.classes),
        train_images=np.asarray(train.data, dtype=np.uint8),
        train_labels=np.asarray(train.targets, dtype=np.int64),
        test_images=np.asarray(test.data, dtype=np.uint8),
        test_labels=np.asarray(test.targets, dtype=np.int64),
    )
    dataset.identity = {
        "source": TORCHVISION_SOURCE,
        "kind": "torchvision",
        "name": "CIFAR-10 (torchvision)",
        "checksum": f"md5:{TORCHVISION_MD5}",
        "note": None,
        "classes": dataset.classes,
        "image_shape": [32, 32, 3],
        "train_pool": 50000,
        "test_total": 10000,
        "test_split": "test",
        "skipped_files": 0,
    }
    return dataset


def _iter_archive(path: Path):
    """Yield (relative posix path, bytes) for every regular file of a tar archive, and
    (path + "/", None) for every folder."""
    try:
        with tarfile.open(path, "r:*") as archive:
            for member in archive:
                if member.isfile():
                    yield member.name, archive.extractfile(member).read()
                elif member.isdir():
                    yield member.name.rstrip("/") + "/", None
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise UserError(
            f"{path} is not a readable archive ({exc.__class__.__name__}: {exc}); it may be truncated or "
            "corrupt: download or copy it again"
        ) from exc


def _iter_directory(path: Path):
    for entry in sorted(path.rglob("*")):
        name = entry.relative_to(path).as_posix()
        if entry.is_file():
            yield name, entry.read_bytes
        elif entry.is_dir():
            yield name + "/", None


def _layout_key(name: str):
    """(split, class) if `name` is `[prefix/]split/class/file`, else None."""
    parts = PurePosixPath(name).parts
    if len(parts) < 3 or parts[-3] not in SPLIT_NAMES:
        return None
    return parts[-3], parts[-2]


def _decode(data: bytes) -> np.ndarray | None:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image = ImageOps.exif_transpose(image).convert("RGB")
            if min(image.size) > MIXED_STORE_SIZE:  # keep memory bounded for large photos
                scale = MIXED_STORE_SIZE / min(image.size)
                image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
            return np.asarray(image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None


def square_crop(image: np.ndarray, size: int) -> np.ndarray:
    """Resize the shorter side to `size` and take the centre square (uint8 HWC in and out)."""
    pil = Image.fromarray(image)
    short = min(pil.size)
    if max(pil.size) > 4 * short:  # a sliver (say 1 x 60,000,000): keep its middle, or enlarging it fills memory
        left, top = (pil.width - min(pil.width, 4 * short)) // 2, (pil.height - min(pil.height, 4 * short)) // 2
        pil = pil.crop((left, top, left + min(pil.width, 4 * short), top + min(pil.height, 4 * short)))
    scale = size / min(pil.size)
    pil = pil.resize((max(size, round(pil.width * scale)), max(size, round(pil.height * scale))), Image.BICUBIC)
    left, top = (pil.width - size) // 2, (pil.height - size) // 2
    return np.asarray(pil.crop((left, top, left + size, top + size)), dtype=np.uint8)


def _decode_class_folders(path: Path, progress: bool) -> ImageDataset:
    entries = _iter_archive(path) if path.is_file() else _iter_directory(path)
    found: dict[str, dict[str, list[tuple[str, object]]]] = {}
    class_dirs: dict[str, set[str]] = {}
    skipped: list[str] = []
    for name, payload in tqdm(entries, desc=f"reading {path.name}", unit=" files", disable=not progress):
        if payload is None:  # a folder: remember split/class/ folders, to catch empty ones
            parts = PurePosixPath(name).parts
            if len(parts) >= 2 and parts[-2] in SPLIT_NAMES and not parts[-1].startswith("."):
                class_dirs.setdefault(parts[-2], set()).add(parts[-1])
            continue
        key = _layout_key(name)
        if key is None or PurePosixPath(name).name.startswith("."):
            continue  # files outside the layout, and hidden files such as .DS_Store
        split, label = key
        class_dirs.setdefault(split, set()).add(label)
        found.setdefault(split, {}).setdefault(label, []).append((name, payload))

    test_split = "test" if "test" in found else "val"
    if "train" not in found or test_split not in found:
        raise UserError(
            f"{path} does not hold the expected layout: train/<class>/<images> and test/<class>/<images> "
            f"(or val/<class>/<images>); found splits: {sorted(found) or 'none'}"
        )
    for split in ("train", test_split):
        empty = sorted(class_dirs.get(split, set()) - set(found[split]))
        if empty:
            raise UserError(f"{path}: class folder(s) {', '.join(f'{split}/{c}/' for c in empty)} hold no images")
    classes = sorted(found["train"])
    if len(classes) < 2:
        raise UserError(f"{path} has {len(classes)} class folder(s) under train/; a classifier needs at least two")
    if sorted(found[test_split]) != classes:
        raise UserError(
            f"{path}: the classes under train/ ({', '.join(classes)}) and {test_split}/ "
            f"({', '.join(sorted(found[test_split]))}) differ; both splits need the same class folders"
        )

    arrays: dict[str, tuple[list[np.ndarray], list[int]]] = {}
    total = sum(len(files) for split in ("train", test_split) for files in found[split].values())
    bar = tqdm(total=total, desc=f"decoding {path.name}", unit=" images", disable=not progress)
    for split in ("train", test_split):
        images, labels = [], []
        for label_index, label in enumerate(classes):
            count = 0
            for name, payload in sorted(found[split][label], key=lambda item: item[0]):
                image = _decode(payload() if callable(payload) else payload)
                bar.update()
                if image is None:
                    skipped.append(name)
                    continue
                images.append(image)
                labels.append(label_index)
                count += 1
            if count == 0:
                raise UserError(f"{path}: class folder {split}/{label}/ holds no readable images")
        arrays[split] = (images, labels)
    bar.close()
    if skipped:
        print(
            f"cifar-tl: skipped {len(skipped)} file(s) that are not readable images (first: {skipped[0]})",
            file=sys.stderr,
        )

    shapes = {image.shape for split in arrays.values() for image in split[0]}
    stack = (
        np.stack
        if len(shapes) == 1
        else lambda images: np.stack([square_crop(image, MIXED_STORE_SIZE) for image in images])
    )
    return ImageDataset(
        classes=classes,
        train_images=stack(arrays["train"][0]),
        train_labels=np.asarray(arrays["train"][1], dtype=np.int64),
        test_images=stack(arrays[test_split][0]),
        test_labels=np.asarray(arrays[test_split][1], dtype=np.int64),
        identity={"test_split": test_split, "skipped_files": len(skipped)},
    )
