"""The command line: JSON on stdout, and exactly one clear line (exit 2, no traceback) for each user mistake;
--debug or CIFAR_TL_DEBUG=1 for the traceback. The commands run in this process (conftest.run_cli), as
`cifar-tl` would run them, without an interpreter start-up per call; one subprocess checks the traceback a
user sees."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def cifar_tl(*args, env=None):
    from conftest import run_cli

    return run_cli(*args, env=env)


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory) -> Path:
    """3 classes of 16x16 PNGs: 12 training and 4 test images each, colours that tell classes apart. Decoded
    once here, so that no command's stderr carries a decoding progress bar before the line a test reads."""
    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    for split, count in (("train", 12), ("test", 4)):
        for c, name in enumerate(("red", "green", "blue")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 60, (16, 16, 3), dtype=np.uint8)
                pixels[..., c] += 150
                Image.fromarray(pixels).save(folder / f"{i}.png")
    from cifar_tl.data.sources import load_dataset

    load_dataset(root, progress=False)  # into the session's cache
    return root


def assert_clean_error(done: subprocess.CompletedProcess, *fragments: str):
    """Exit status 2, nothing on stdout, and stderr exactly one line: `cifar-tl: error: ...` with the fragments."""
    from conftest import assert_one_error_line

    assert_one_error_line(done, *fragments)


def test_train_json_is_exactly_the_record(tiny_folders):
    args = ["train", "--backbone", "simple_cnn", "--recipe", "linear_probe", "--per-class", "8",
            "--val-per-class", "4", "--epochs", "2", "--data", str(tiny_folders), "--json"]
    done = cifar_tl(*args)
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)  # the whole of stdout is one JSON object
    assert record["config"]["backbone"] == "simple_cnn"
    assert record["metrics"]["test_images"] == 12
    assert 0.0 <= record["metrics"]["test_accuracy"] <= 1.0
    assert len(record["history"]) == 2
    assert record["data"]["counts"] == {"train": 24, "val": 12, "test": 12}
    # The second identical command reads the record back: the same JSON, same creation time.
    again = json.loads(cifar_tl(*args).stdout)
    assert again["created"] == record["created"] and again["metrics"] == record["metrics"]


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["train", "--backbone", "vgg99"], ["unknown backbone 'vgg99'", "efficientnet_lite0", "resnet18"]),
        (["train", "--recipe", "magic"], ["unknown recipe 'magic'", "linear_probe"]),
        (["train", "--profile", "huge"], ["unknown profile 'huge'", "smoke", "full"]),
        (["train", "--image-size", "0"], ["--image-size", "at least 1"]),
        (["train", "--epochs", "-3"], ["--epochs", "at least 1"]),
        (["train", "--per-class", "many"], ["--per-class", "not a whole number"]),
        (["train", "--eval-sizes", "32,big"], ["--eval-sizes", "not a list of whole numbers"]),
        (["train", "--eval-sizes", "8,32"], ["--eval-sizes must be input sizes of at least 16 pixels"]),
        (["train", "--data", "/nonexistent/cifar"], ["does not exist", "CIFAR_TL_DATA"]),
        (["run", "99"], ["unknown chapter '99'", "01-data"]),
        (["run", "03", "-p", "no_such_parameter", "1"], ["has no parameter 'no_such_parameter'", "backbone"]),
        (["run", "03", "-p", "seeds", "lots"], ["parameter seeds", "list of whole numbers", "lots"]),
        (["run", "03", "--profile", "huge"], ["unknown profile 'huge'"]),
        (["book", "--profile", "huge"], ["unknown profile 'huge'"]),
        (["results", "/nonexistent/results"], ["'/nonexistent/results' is not a folder of run records"]),
        (["results", "--base", "magic", "."], ["unknown recipe 'magic'"]),
        (["frobnicate"], ["invalid choice"]),
    ],
)
def test_user_mistakes_get_one_clear_line(args, fragments):
    assert_clean_error(cifar_tl(*args), *fragments)


def test_per_class_larger_than_a_class_names_the_class(tiny_folders):
    done = cifar_tl("train", "--backbone", "simple_cnn", "--per-class", "50", "--data", str(tiny_folders))
    assert_clean_error(done, "class 'blue' has 12")


def test_debug_raises_instead_of_one_line():
    from cifar_tl.core.errors import UserError

    with pytest.raises(UserError, match="unknown backbone 'vgg99'"):  # the interpreter prints its traceback
        cifar_tl("--debug", "train", "--backbone", "vgg99")
    with pytest.raises(UserError, match="unknown backbone 'vgg99'"):
        cifar_tl("train", "--backbone", "vgg99", env={"CIFAR_TL_DEBUG": "1"})
    assert_clean_error(cifar_tl("train", "--backbone", "vgg99", env={"CIFAR_TL_DEBUG": "0"}), "vgg99")
    assert_clean_error(cifar_tl("train", "--backbone", "vgg99", env={"CIFAR_TL_DEBUG": ""}), "vgg99")


def test_cifar_tl_debug_shows_the_traceback_a_user_sees():
    """As the README says it: CIFAR_TL_DEBUG=1 in the environment of a real `cifar-tl` process."""
    done = subprocess.run([sys.executable, "-m", "cifar_tl.cli", "train", "--backbone", "vgg99"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "CIFAR_TL_DEBUG": "1"})
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr and "UserError: unknown backbone 'vgg99'" in done.stderr


def test_chapters_lists_one_line_per_chapter_starting_with_its_id():
    done = cifar_tl("chapters")
    assert done.returncode == 0
    lines = done.stdout.strip().splitlines()
    notebooks = sorted(p.stem for p in (Path(__file__).parents[1] / "notebooks").glob("[0-9a][0-9]-*.ipynb"))
    assert [line.split("\t")[0] for line in lines] == notebooks
    assert lines[0].startswith("01-data\t")


def _write_record(folder: Path, recipe: str, seed: int, test: float, seconds: float) -> None:
    record = {"config": {"recipe": recipe, "seed": seed, "backbone": "efficientnet_lite0", "profile": "full",
                         "image_size": 224},
              "metrics": {"val_accuracy": test, "test_accuracy": test, "test_images": 10000},
              "timing": {"total_seconds": seconds}, "machine": {"gpu": None, "cpu": "Some CPU"}}
    (folder / f"{recipe}-s{seed}.json").write_text(json.dumps(record))


def test_results_summarises_records_over_subsets_with_paired_differences(tmp_path):
    for seed, (probe, full) in enumerate([(0.70, 0.85), (0.72, 0.86), (0.74, 0.90)]):
        _write_record(tmp_path, "linear_probe", seed, probe, 60.0)
        _write_record(tmp_path, "full", seed, full, 600.0 + 60 * seed)
    (tmp_path / "README.json").write_text("[]")
    done = cifar_tl("results", str(tmp_path), "--base", "linear_probe", "--json")
    assert done.returncode == 0, done.stderr
    rows = {row["recipe"]: row for row in json.loads(done.stdout)}
    assert rows["full"]["test accuracy"] == "87.0 ± 2.6% (n=3)"
    assert rows["full"]["subsets (seeds)"] == "0, 1, 2"
    assert rows["full"]["minutes per run"] == "11.0"
    assert rows["full"]["test Δ vs linear_probe, per subset (pp)"] == "s0 +15.0, s1 +14.0, s2 +16.0"
    assert rows["linear_probe"]["test Δ vs linear_probe, per subset (pp)"] == "–"
    assert "README.json" in done.stderr  # named as skipped, not silently dropped
    text = cifar_tl("results", str(tmp_path))
    assert text.returncode == 0 and "87.0 ± 2.6% (n=3)" in text.stdout and "Δ" not in text.stdout


def test_results_without_records_says_so(tmp_path):
    assert_clean_error(cifar_tl("results", str(tmp_path)), "no run records")
