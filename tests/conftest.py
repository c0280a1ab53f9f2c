"""Shared fixtures: an isolated cache and torch home for the whole session, the real CIFAR-10 copy,
and tiny class-folder datasets written with PIL."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

JPEG_ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"


@pytest.fixture(scope="session", autouse=True)
def isolated_environment(tmp_path_factory):
    """Point the data/run cache and TORCH_HOME at temporary folders, offline, for the whole session.

    os.environ is set directly (not through monkeypatch) so that subprocesses inherit it.
    """
    names = ("CIFAR_TL_CACHE", "CIFAR_TL_OFFLINE", "TORCH_HOME")
    saved = {name: os.environ.get(name) for name in names}
    os.environ["CIFAR_TL_CACHE"] = str(tmp_path_factory.mktemp("cifar-tl-cache"))
    os.environ["CIFAR_TL_OFFLINE"] = "1"
    os.environ["TORCH_HOME"] = str(tmp_path_factory.mktemp("torch-home"))
    # One intra-op thread: the tests' tensors are tiny, and on a 2-core machine with anything else
    # running, OpenMP's two-thread barriers make each op up to 100x slower (measured: an
    # EfficientNet-Lite0 forward at 32x32 took 3 s with 2 threads, 0.02 s with 1).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def jpeg_archive() -> Path:
    """The real CIFAR-10 class-folder archive (JPEG q75 copy): $CIFAR_TL_DATA, else ../shared/data."""
    chosen = os.environ.get("CIFAR_TL_DATA")
    path = Path(chosen).expanduser().resolve() if chosen else JPEG_ARCHIVE
    if not path.is_file():
        pytest.fail(
            f"the CIFAR-10 JPEG archive is missing: expected {path}; set CIFAR_TL_DATA to a copy of "
            "cifar10-jpeg.tar.gz (see ../shared/data/README.md)"
        )
    return path


@pytest.fixture(scope="session")
def cifar_jpeg(jpeg_archive):
    """The real archive loaded once for the session (decodes 60,000 JPEGs: about 10 s)."""
    from cifar_tl.data import load_dataset

    return load_dataset(jpeg_archive, progress=False)


def _noise_image(rng: np.random.Generator, width: int, height: int, colour=None) -> Image.Image:
    if colour is not None:
        return Image.new("RGB", (width, height), tuple(int(c) for c in colour))
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))


def write_class_folders(
    root: Path,
    classes: int = 3,
    per_class: int = 4,
    test_per_class: int = 2,
    test_split: str = "test",
    sizes=((32, 32),),
    formats=("png",),
    non_image: bool = False,
    solid: bool = False,
    train_classes=None,
    test_classes=None,
    seed: int = 0,
) -> Path:
    """Write a tiny class-folder dataset under `root` and return `root`.

    `root/train/<class>/NNNN.png|jpg` and `root/<test_split>/<class>/...`. `sizes` are (width, height)
    used in turn, `formats` ("png" or "jpg") likewise. `non_image` adds `notes.txt` inside the first
    train class folder. `solid` paints every image of class c one flat colour,
    ((c * 80 + 10) % 256, 100, 200); otherwise the images are random noise. `train_classes` and
    `test_classes` override the class names (default class0, class1, ...) per split.
    """
    rng = np.random.default_rng(seed)
    default_names = [f"class{c}" for c in range(classes)]
    train_names = list(train_classes) if train_classes is not None else default_names
    test_names = list(test_classes) if test_classes is not None else default_names
    index = 0
    for split, names, count in (("train", train_names, per_class), (test_split, test_names, test_per_class)):
        for class_index, class_name in enumerate(names):
            folder = root / split / class_name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                width, height = sizes[index % len(sizes)]
                fmt = formats[index % len(formats)]
                index += 1
                colour = [(class_index * 80 + 10) % 256, 100, 200] if solid else None
                image = _noise_image(rng, width, height, colour)
                if fmt == "jpg":
                    image.save(folder / f"{i:04d}.jpg", quality=90)
                else:
                    image.save(folder / f"{i:04d}.png")
    if non_image:
        (root / "train" / train_names[0] / "notes.txt").write_text("not an image\n")
    return root


@pytest.fixture
def make_class_folders(tmp_path):
    """A factory: make_class_folders(**options) writes a new dataset under tmp_path and returns its
    directory; the options are those of `write_class_folders` (classes, per_class, test_per_class,
    test_split, sizes, formats, non_image, solid, train_classes, test_classes, seed), plus `name`."""
    counter = {"n": 0}

    def make(name: str | None = None, **options) -> Path:
        counter["n"] += 1
        return write_class_folders(tmp_path / (name or f"dataset{counter['n']}"), **options)

    return make


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A session-wide class-folder directory: 3 classes, 30 train and 10 test 32x32 images each.

    Each class has its own base colour plus noise, so a model can learn it. Do not modify it.
    """
    root = tmp_path_factory.mktemp("tiny") / "tiny-dataset"
    rng = np.random.default_rng(42)
    for split, count in (("train", 30), ("test", 10)):
        for c, name in enumerate(("apple", "banana", "cherry")):
            folder = root / split / name
            folder.mkdir(parents=True)
            base = np.array([(c * 90 + 20) % 256, 120, 255 - c * 90], dtype=np.int16)
            for i in range(count):
                pixels = base + rng.integers(-40, 41, size=(32, 32, 3))
                Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"{i:04d}.png")
    return root


def pack_tar_gz(directory: Path, target: Path | None = None, prefix: str | None = None) -> Path:
    """Pack `directory`'s contents as a .tar.gz (members `[prefix/]train/...`) and return its path."""
    target = target or directory.with_name(directory.name + ".tar.gz")
    with tarfile.open(target, "w:gz") as archive:
        for path in sorted(directory.rglob("*")):
            relative = path.relative_to(directory).as_posix()
            archive.add(path, arcname=f"{prefix}/{relative}" if prefix else relative, recursive=False)
    return target


@pytest.fixture
def make_tar_gz():
    """A factory: make_tar_gz(directory, target=None, prefix=None) packs a class-folder directory."""
    return pack_tar_gz


@pytest.fixture(scope="session")
def built_book() -> Path:
    """`cifar-tl book --profile smoke`, run once per session as a user would (timed); returns _build/.

    The chapter tests and the website's browser test share it, so the book is built once.
    """
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "cifar_tl.cli", "book", "--profile", "smoke"],
                          capture_output=True, text=True, timeout=1500, env=os.environ.copy())
    print(f"\nsmoke book built in {time.perf_counter() - started:.0f} s")
    assert done.returncode == 0, done.stderr[-3000:]
    return Path(__file__).resolve().parents[1] / "_build"


@pytest.fixture(scope="session")
def published_book(built_book, tmp_path_factory) -> tuple[Path, str]:
    """`cifar-tl book` as the README's main command runs it: each chapter from its committed records, the
    rest in the smoke profile (copied from the smoke build rather than executed twice). Returns the build
    folder and what the build printed."""
    build = tmp_path_factory.mktemp("published")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "cifar_tl.cli", "book", "--build-dir", str(build), "--reuse-smoke",
                           str(built_book / "source" / "notebooks")],
                          capture_output=True, text=True, timeout=1500, env=os.environ.copy())
    print(f"\npublished book built in {time.perf_counter() - started:.0f} s")
    assert done.returncode == 0, done.stderr[-3000:]
    return build, done.stderr
