"""A chapter run the way Colab runs it: the notebook alone in a folder outside the checkout, the library
installed from a wheel of this checkout (what the install cell's `pip install cifar-tl @ git+…` builds),
and the reference results read from the copy shipped inside the package."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cifar_tl.book.build import ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed_package(tmp_path_factory) -> Path:
    """A wheel of this checkout installed into a folder of its own (no dependencies: they are the venv's)."""
    wheels = tmp_path_factory.mktemp("wheel")
    site = tmp_path_factory.mktemp("site-packages")
    # A copy of the source without build outputs: setuptools' build/ keeps files deleted since (a stale
    # record, a removed module) and would put them in the wheel.
    source = tmp_path_factory.mktemp("source") / "cifar-tl"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "_build", "build", "*.egg-info", "__pycache__", ".claims", "tests", ".gpu", "gpu-out"))


    def pip(*arguments):
        done = subprocess.run([sys.executable, "-m", "pip", *arguments], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]

    pip("wheel", "--no-deps", "--no-build-isolation", "-q", str(source), "-w", str(wheels))
    pip("install", "--no-deps", "-q", "--target", str(site), *map(str, wheels.glob("*.whl")))
    return site


def _outside_environment(site: Path, data: Path | None = None) -> dict:
    environment = {**os.environ, "PYTHONPATH": str(site)}  # before the venv's editable checkout on sys.path
    environment.pop("CIFAR_TL_RESULTS", None)
    if data is not None:  # absolute: the README's CIFAR_TL_DATA is relative to the checkout, the kernel runs elsewhere
        environment["CIFAR_TL_DATA"] = str(data)
    return environment


def test_the_installed_package_ships_the_committed_records(installed_package, tmp_path):
    shown = subprocess.run(
        [sys.executable, "-c", "import cifar_tl, cifar_tl.records.store as r; "
         "print(cifar_tl.__file__); print(len(r.committed_records())); print(r.results_dirs(writable=True))"],
        capture_output=True, text=True, cwd=tmp_path, env=_outside_environment(installed_package), timeout=300)
    assert shown.returncode == 0, shown.stderr[-2000:]
    location, count, writable = shown.stdout.split("\n")[:3]
    assert Path(location).is_relative_to(installed_package)
    committed = [p for p in (ROOT / "results").rglob("*.json") if "bench" not in p.parts]
    assert int(count) == len(committed) > 0
    assert writable == "[]"  # a campaign never writes into an installed package


def test_a_chapter_runs_outside_the_checkout_from_the_installed_package(built_book, installed_package, jpeg_archive,
                                                                      tmp_path):
    """Chapter 12 (the one that reads the reference records), alone in an empty folder, as Colab opens it.
    `built_book` first: the smoke runs it trained are in the session's cache, so nothing trains twice."""
    colab = tmp_path / "content"
    colab.mkdir()
    notebook = colab / "12-full-recipe.ipynb"
    notebook.write_bytes((ROOT / "notebooks" / notebook.name).read_bytes())
    executed = colab / "executed.ipynb"
    done = subprocess.run(
        [sys.executable, "-m", "papermill", str(notebook), str(executed), "--cwd", str(colab), "-k", "python3",
         "--no-progress-bar", "-p", "profile", "smoke"],  # not auto: with a GPU auto means full (hours of training)
        capture_output=True, text=True, cwd=colab, env=_outside_environment(installed_package, jpeg_archive),
        timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]

    cells = json.loads(executed.read_text())["cells"]
    outputs = [o for c in cells if c["cell_type"] == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o["output_type"] == "error"]
    markdown = ["".join(o["data"]["text/markdown"]) for o in outputs if "text/markdown" in o.get("data", {})]
    assert markdown and not [text for text in markdown if "{glue" in text]
    everything = "\n".join(markdown) + "".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    assert "{glue" not in everything
    # The reference records, read from the package (not from ../results, which does not exist here).
    assert "Profile:** `smoke`" in "\n".join(markdown)  # the profile asked for, on any machine
    assert "the copy shipped with the installed cifar-tl" in "\n".join(markdown)
    assert "reference record(s) are committed" in "\n".join(markdown)
    tables = [o for o in outputs if "text/html" in o.get("data", {})]
    assert any("full" in "".join(o["data"]["text/html"]) and "%" in "".join(o["data"]["text/html"]) for o in tables)
