"""Shared fixtures: an isolated cache and torch home for the whole session, the real CIFAR-10 copy,
and tiny class-folder datasets written with PIL."""

from __future__ import annotations

import builtins
import contextlib
import io
import os
import shutil
import signal
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
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
PRECISION_CHOICES = ("auto", "bf16", "fp32")


def pytest_addoption(parser):
    parser.addoption(
        "--precision", choices=PRECISION_CHOICES, default="auto",
        help="the precision that the precision-dependent tests (marker `precision`) ask their runs for; each "
             "expects what cifar_tl.core.device.resolve_precision makes of it on this machine (default: auto)")


@pytest.fixture(scope="session")
def asked_precision(request) -> str:
    """What the precision-dependent tests ask for (`--precision`, default "auto"); tests expect
    `resolve_precision(asked_precision, device)`, never a fixed precision."""
    return request.config.getoption("--precision")


@pytest.fixture(scope="session", autouse=True)
def isolated_environment(tmp_path_factory):
    """Point the data/run cache and TORCH_HOME at temporary folders, offline, for the whole session.

    os.environ is set directly (not through monkeypatch) so that subprocesses inherit it.
    """
    names = ("CIFAR_TL_CACHE", "CIFAR_TL_OFFLINE", "TORCH_HOME", *THREAD_VARIABLES)
    saved = {name: os.environ.get(name) for name in names}
    os.environ["CIFAR_TL_CACHE"] = str(tmp_path_factory.mktemp("cifar-tl-cache"))
    os.environ["CIFAR_TL_OFFLINE"] = "1"
    os.environ["TORCH_HOME"] = str(tmp_path_factory.mktemp("torch-home"))
    # One intra-op thread: the tests' tensors are tiny, and on a 2-core machine with anything else
    # running, OpenMP's two-thread barriers make each op up to 100x slower (measured: an
    # EfficientNet-Lite0 forward at 32x32 took 3 s with 2 threads, 0.02 s with 1). The variables reach
    # every process the tests start (CLI subprocesses, papermill's kernels, the book build), which read
    # them when they load torch; a developer's own setting is kept.
    for name in THREAD_VARIABLES:
        os.environ.setdefault(name, "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield os.environ["CIFAR_TL_CACHE"]
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
    """The real archive loaded once for the session (decodes 60,000 JPEGs: about 10 s), its arrays kept in the
    session's cache; `share_decoded_arrays` hands them to a test's own cache."""
    from cifar_tl.data.sources import load_dataset

    return load_dataset(jpeg_archive, progress=False)


@pytest.fixture
def share_decoded_arrays(cifar_jpeg, isolated_environment):
    """share(cache): link the session cache's decoded arrays (the real archive's among them) into `cache`/data,
    so that a test with a cache of its own, or a process it starts, reads them instead of decoding the 60,000
    images again."""
    session_data = Path(isolated_environment) / "data"

    def share(cache: Path) -> None:
        (Path(cache) / "data").mkdir(parents=True, exist_ok=True)
        for arrays in session_data.glob("*.npz"):
            target = Path(cache) / "data" / arrays.name
            if not target.exists():
                try:
                    os.link(arrays, target)
                except OSError:
                    shutil.copy(arrays, target)

    return share


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


BOOK_ENVIRONMENT = {"MPLBACKEND": "Agg"}  # as on a headless server or CI machine: chapters must keep their figures


@pytest.fixture(scope="session")
def built_book(tmp_path_factory) -> Path:
    """`cifar-tl book --profile smoke`, run once per session as a user would (timed); returns its build folder
    (`source/notebooks/` the executed chapters, `html/` the website).

    The chapter tests, the figures-under-Agg test, chapter 13's test and the website's browser test share
    it, so every chapter is executed once. It is built with MPLBACKEND=Agg (BOOK_ENVIRONMENT), into a folder
    of the session's (--build-dir), so that a test run neither clobbers nor reads the checkout's _build/.
    """
    build = tmp_path_factory.mktemp("smoke-book")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "cifar_tl.cli", "book", "--profile", "smoke", "--build-dir", str(build)],
                          capture_output=True, text=True, timeout=1500, env={**os.environ, **BOOK_ENVIRONMENT})
    print(f"\nsmoke book built in {time.perf_counter() - started:.0f} s")
    assert done.returncode == 0, done.stderr[-3000:]
    return build


def _run_records_in_cache() -> dict[str, int]:
    """Every file under the session cache's runs/ (records, saved models, resume states), by name, with its
    modification time: what a training run would add to or change."""
    runs = Path(os.environ["CIFAR_TL_CACHE"]) / "runs"
    return {str(p.relative_to(runs)): p.stat().st_mtime_ns for p in runs.rglob("*") if p.is_file()} \
        if runs.is_dir() else {}


@pytest.fixture(scope="session")
def published_book(built_book, tmp_path_factory) -> tuple[Path, str, dict]:
    """`cifar-tl book` as the README's main command runs it: each chapter from its committed records, the
    rest in the smoke profile (copied from the smoke build rather than executed twice). Returns the build
    folder, what the build printed, and the run files the build added to or changed in the session cache
    (before and after: a build that trains nothing leaves that empty)."""
    build = tmp_path_factory.mktemp("published")
    before = _run_records_in_cache()
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "cifar_tl.cli", "book", "--build-dir", str(build), "--reuse-smoke",
                           str(built_book / "source" / "notebooks")],
                          capture_output=True, text=True, timeout=1500, env={**os.environ, **BOOK_ENVIRONMENT})
    print(f"\npublished book built in {time.perf_counter() - started:.0f} s")
    assert done.returncode == 0, done.stderr[-3000:]
    after = _run_records_in_cache()
    changed = {name: (before.get(name), mtime) for name, mtime in after.items() if before.get(name) != mtime}
    return build, done.stderr, changed


# -- the command line, in this process ----------------------------------------------------------------------


def run_cli(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    """`cifar-tl ARGS` run in this process (cifar_tl.cli.main), as subprocess.run would report it: the exit
    status main returns, and what it wrote to stdout and stderr. No interpreter start-up or torch import per
    call. os.environ (which `campaign --results` sets) and the SIGTERM handler main installs are restored
    afterwards; CIFAR_TL_DEBUG is unset unless `env` sets it. With --debug, main's exception propagates."""
    from cifar_tl import cli

    saved_environ, handler = dict(os.environ), signal.getsignal(signal.SIGTERM)
    os.environ.pop("CIFAR_TL_DEBUG", None)
    os.environ.update(env or {})
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main([str(a) for a in args])
    finally:
        os.environ.clear()
        os.environ.update(saved_environ)
        signal.signal(signal.SIGTERM, handler)
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def cli_main():
    """`run_cli`: cifar_tl.cli.main in this process with stdout and stderr captured (usable at any scope)."""
    return run_cli


def assert_one_error_line(done: subprocess.CompletedProcess, *fragments: str) -> str:
    """A user mistake as the README promises it: exit status 2, nothing on stdout, and exactly one line on
    stderr, `cifar-tl: error: ...`, holding every fragment; no traceback. Returns the line."""
    assert done.returncode == 2, (done.returncode, done.stderr)
    lines = done.stderr.strip("\n").split("\n") if done.stderr.strip() else []
    assert len(lines) == 1, f"expected exactly one line on stderr, got {len(lines)}:\n{done.stderr}"
    assert lines[0].startswith("cifar-tl: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert "Traceback" not in done.stderr and done.stdout == ""
    return lines[0]


@pytest.fixture(scope="session")
def one_error_line():
    return assert_one_error_line


# -- an interruption in the middle of writing a file --------------------------------------------------------


class InterruptedWrites:
    """After `arm(folder, suffix)`, the first write of a file named `*suffix` under `folder` puts half its
    bytes on disk, flushed, and raises KeyboardInterrupt there, as a Ctrl-C in the middle of writing would.
    Covers open() and pathlib's open/write_text/write_bytes (whatever name the file has: the final one or a
    temporary one) and torch.save (whose writer bypasses Python's open). `fired` says it happened."""

    def __init__(self, monkeypatch):
        self.monkeypatch = monkeypatch
        self.folder, self.suffix, self.fired, self.hit = None, "", False, None

    def _target(self, file) -> bool:
        if self.fired or self.folder is None:
            return False
        try:
            path = Path(os.fspath(file)).resolve()
        except TypeError:  # a file descriptor
            return False
        return path.is_relative_to(self.folder) and path.name.endswith(self.suffix)

    def _interrupt(self, handle, data, path):
        self.fired, self.hit = True, Path(os.fspath(path))
        handle.write(data[: max(1, len(data) // 2)])
        handle.flush()
        raise KeyboardInterrupt

    def arm(self, folder, suffix: str = ""):
        self.folder, self.suffix = Path(folder).resolve(), suffix
        real_open, real_save, outer = io.open, torch.save, self

        class HalfWrite:
            def __init__(self, handle, path):
                self._handle, self._path = handle, path

            def write(self, data):
                if not outer.fired:
                    outer._interrupt(self._handle, data, self._path)
                return self._handle.write(data)

            def __getattr__(self, name):
                return getattr(self._handle, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self._handle.close()

        def interrupting_open(file, mode="r", *args, **kwargs):
            handle = real_open(file, mode, *args, **kwargs)
            if any(flag in mode for flag in "wax+") and self._target(file):
                return HalfWrite(handle, file)
            return handle

        def interrupting_save(obj, f, *args, **kwargs):
            if isinstance(f, (str, os.PathLike)) and self._target(f):
                buffer = io.BytesIO()
                real_save(obj, buffer, *args, **kwargs)
                with real_open(f, "wb") as handle:
                    self._interrupt(handle, buffer.getvalue(), f)
            return real_save(obj, f, *args, **kwargs)

        self.monkeypatch.setattr(builtins, "open", interrupting_open)
        self.monkeypatch.setattr(io, "open", interrupting_open)
        self.monkeypatch.setattr(torch, "save", interrupting_save)
        return self


@pytest.fixture
def interrupted_writes(monkeypatch) -> InterruptedWrites:
    return InterruptedWrites(monkeypatch)
