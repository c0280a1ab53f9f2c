"""One table of bad and hostile inputs across the command line (`train`, `run`, `book`, `campaign`, `results`,
`predict`, `app`) and a chapter's parameters (`chapter.setup`, the first code cell of every chapter).

Each row: the input, the exit status, a fragment of the one line on stderr, and afterwards the check that
nothing half-written is left: no temporary file, every earlier file of the cache, `results/`, the build folder
and the checkpoints as it was, any new file whole. Commands run in this process (`cifar_tl.cli.main`), so the
table is fast; a row's full disk is writes failing with OSError(ENOSPC) (test_full_disk.py also fills a real
one). `CIFAR_TL_SHOW_TABLE=1` prints every row's line (for the notes).
"""

from __future__ import annotations

import io
import os
import pickle
import shutil
import signal
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

import faults
from cifar_tl import cli
from cifar_tl.book import chapter
from cifar_tl.core.errors import UserError
from cifar_tl.data.sources import load_dataset
from cifar_tl.models.backbones import create_model
from cifar_tl.models.checkpoints import save_checkpoint

TINY_CLASSES = ["apple", "banana", "cherry"]  # conftest's tiny_dataset
SMALL_TRAIN = ["--backbone", "simple_cnn", "--recipe", "linear_probe", "--profile", "smoke", "--per-class", "5",
               "--val-per-class", "2", "--epochs", "1"]


@dataclass
class World:
    root: Path
    tiny: Path
    cache: Path
    results: Path
    build: Path
    checkpoints: Path
    disk: Path  # a folder whose writes a row may make fail as on a full disk
    marker: Path  # created only if a hostile file's code ran
    paths: dict = field(default_factory=dict)

    @property
    def roots(self) -> tuple[Path, ...]:
        return self.cache, self.results, self.build, self.checkpoints, self.disk

    def __getitem__(self, name: str) -> str:
        return str(self.paths[name])


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_dataset) -> World:
    root = tmp_path_factory.mktemp("hostile")
    w = World(root, tiny_dataset, root / "cache", root / "results", root / "build", root / "checkpoints",
              root / "disk", root / "code-ran")
    for folder in (w.results, w.checkpoints, w.disk):
        folder.mkdir()
    (w.build / "html").mkdir(parents=True)
    (w.build / "html" / "index.html").write_text("<p>the book built before</p>\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CIFAR_TL_CACHE", str(w.cache))
        load_dataset(tiny_dataset, progress=False)  # the decoded arrays, cached as an earlier run left them
    p = w.paths

    # Checkpoints: one good, and a folder of bad ones.
    p["good.pt"] = w.checkpoints / "good.pt"
    torch.manual_seed(0)
    save_checkpoint(p["good.pt"], create_model("simple_cnn", 3, pretrained=False), TINY_CLASSES, 32,
                    {"name": "untrained", "metrics": {}, "data": {"name": "tiny", "image_shape": [32, 32, 3]}})
    bad = w.checkpoints / "bad"
    bad.mkdir()
    torch.save({"format": "cifar-tl-checkpoint", "payload": faults.RunsCode(w.marker)}, bad / "code.pt")
    (bad / "pickle.pt").write_bytes(pickle.dumps(faults.RunsCode(w.marker), protocol=4))
    (bad / "garbage.pt").write_bytes(np.random.default_rng(0).bytes(5000))
    (bad / "cut.pt").write_bytes(p["good.pt"].read_bytes()[:3000])
    (bad / "folder.pt").mkdir()
    p["bad checkpoints"], p["code.pt"], p["pickle.pt"], p["cut.pt"] = bad, bad / "code.pt", bad / "pickle.pt", bad / "cut.pt"
    p["no checkpoints"] = root / "no-checkpoints"
    p["no checkpoints"].mkdir()
    (p["no checkpoints"] / "notes.txt").write_text("no checkpoints here\n")

    # Images.
    images = root / "images"
    images.mkdir()
    Image.open(tiny_dataset / "test" / "cherry" / "0000.png").save(images / "good.png")
    (images / "empty.png").write_bytes(b"")
    (images / "text.png").write_text("not an image\n")
    (images / "huge.png").write_bytes(faults.png_claiming(60_000, 60_000))
    (images / "cut.png").write_bytes((images / "good.png").read_bytes()[:200])
    (images / "folder.png").mkdir()
    for name in ("good.png", "empty.png", "text.png", "huge.png", "cut.png", "folder.png"):
        p[name] = images / name

    # Data sources.
    data = root / "data"
    data.mkdir()
    p["notes.txt"] = data / "notes.txt"
    p["notes.txt"].write_text("not an archive\n")
    archive = data / "tiny.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tiny_dataset, arcname=".")
    p["cut.tar.gz"] = data / "cut.tar.gz"
    p["cut.tar.gz"].write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    p["climbing.tar.gz"] = data / "climbing.tar.gz"
    with tarfile.open(p["climbing.tar.gz"], "w:gz") as tar:
        for name in ("../../outside/escaped.png", "/etc/cifar-tl-escaped.png"):
            member = tarfile.TarInfo(name)
            payload = (images / "good.png").read_bytes()
            member.size = len(payload)
            tar.addfile(member, io.BytesIO(payload))
    p["no layout"] = data / "no-layout"
    for c in TINY_CLASSES:
        (p["no layout"] / c).mkdir(parents=True)
        shutil.copy(images / "good.png", p["no layout"] / c / "0.png")
    p["empty class"] = data / "empty-class"
    shutil.copytree(tiny_dataset, p["empty class"])
    (p["empty class"] / "train" / "durian").mkdir()
    p["unreadable class"] = data / "unreadable-class"
    shutil.copytree(tiny_dataset, p["unreadable class"])
    for split in ("train", "test"):
        (p["unreadable class"] / split / "durian").mkdir()
        (p["unreadable class"] / split / "durian" / "0.png").write_text("not an image\n")
    p["other test classes"] = data / "other-test-classes"
    shutil.copytree(tiny_dataset, p["other test classes"])
    (p["other test classes"] / "test" / "cherry").rename(p["other test classes"] / "test" / "date")
    p["one class"] = data / "one-class"
    shutil.copytree(tiny_dataset / "train" / "apple", p["one class"] / "train" / "apple")
    shutil.copytree(tiny_dataset / "test" / "apple", p["one class"] / "test" / "apple")
    p["with bombs"] = data / "with-bombs"
    shutil.copytree(tiny_dataset, p["with bombs"])
    (p["with bombs"] / "train" / "apple" / "9000.png").write_bytes(faults.png_claiming(60_000, 60_000))
    (p["with bombs"] / "train" / "apple" / "9001.png").write_text("not an image\n")
    p["fresh"] = data / "fresh"  # not decoded yet: its arrays are written by the run
    shutil.copytree(tiny_dataset, p["fresh"])

    # Folders of run records.
    p["no records"] = root / "no-records"
    p["no records"].mkdir()
    p["garbled records"] = root / "garbled-records"
    p["garbled records"].mkdir()
    (p["garbled records"] / "garbled.json").write_text("{not json")
    (p["garbled records"] / "list.json").write_text("[1, 2, 3]")
    (p["garbled records"] / "cut.json").write_text('{"config": {"recipe": "linear_probe"}, "metrics": {"test_')
    p["executed"] = w.disk / "executed"
    p["executed"].mkdir()
    (p["executed"] / "01-data.ipynb").write_text('{"an earlier": "executed chapter"}\n')
    p["disk build"] = w.disk / "build"
    (p["disk build"] / "html").mkdir(parents=True)
    (p["disk build"] / "html" / "index.html").write_text("<p>the book built before</p>\n")
    p["disk model.pt"] = w.disk / "model.pt"
    shutil.copy(p["good.pt"], p["disk model.pt"])
    p["disk cache"] = w.disk / "cache"
    return w


@dataclass(frozen=True)
class Row:
    """`args(world)`: the command line, or (for a chapter parameter) the keyword arguments of chapter.setup;
    `status`: the exit status (a chapter parameter: 2, what `cifar-tl run` gives for a UserError in a chapter);
    `message`: a fragment of the one line. `full_disk(world)`: a folder whose writes fail as on a full disk;
    `env(world)`: variables to set."""

    id: str
    args: Callable
    status: int
    message: str
    full_disk: Callable | None = None
    env: Callable | None = None
    setup: bool = False


def train(*extra):
    """`cifar-tl train` of a small run on the tiny dataset (unless `extra` gives --data); "@name" is world[name]."""
    def args(w: World) -> list[str]:
        data = [] if "--data" in extra else ["--data", str(w.tiny)]
        return ["train", *SMALL_TRAIN, *data, *(w[a[1:]] if a.startswith("@") else a for a in extra)]

    return args


ROWS = [
    # -- train --------------------------------------------------------------------------------------------
    Row("train: unknown backbone", lambda w: ["train", "--backbone", "vgg99"], 2, "unknown backbone 'vgg99'"),
    Row("train: unknown recipe", lambda w: ["train", "--recipe", "magic"], 2, "unknown recipe 'magic'"),
    Row("train: unknown profile", lambda w: ["train", "--profile", "huge"], 2, "unknown profile 'huge'"),
    Row("train: --per-class 0", lambda w: ["train", "--per-class", "0"], 2, "--per-class: must be at least 1"),
    Row("train: --per-class not a number", lambda w: ["train", "--per-class", "many"], 2, "'many' is not a whole number"),
    Row("train: negative seed", lambda w: ["train", "--seed", "-1"], 2, "--seed: must be at least 0"),
    Row("train: a seed beyond 64 bits", lambda w: ["train", "--seed", str(10**23)], 2, "a seed is at most 4294967295"),
    Row("train: unknown precision", lambda w: ["train", "--precision", "fp64"], 2, "invalid choice: 'fp64'"),
    Row("train: unknown device", train("--device", "banana"), 2, "unknown device 'banana'"),
    Row("train: data path missing", lambda w: ["train", "--data", str(w.root / "nowhere")], 2, "does not exist"),
    Row("train: data is a text file", train("--data", "@notes.txt"), 2, "is a file but not a .tar.gz/.tgz/.tar archive"),
    Row("train: archive cut short", train("--data", "@cut.tar.gz"), 2, "is not a readable archive"),
    Row("train: archive whose members climb out", train("--data", "@climbing.tar.gz"), 2,
        "does not hold the expected layout"),
    Row("train: class folders without splits", train("--data", "@no layout"), 2, "does not hold the expected layout"),
    Row("train: an empty class folder", train("--data", "@empty class"), 2, "train/durian/ hold no images"),
    Row("train: a class of unreadable files", train("--data", "@unreadable class"), 2,
        "class folder train/durian/ holds no readable images"),
    Row("train: test classes differ", train("--data", "@other test classes"), 2, "differ; both splits need the same"),
    Row("train: one class", train("--data", "@one class"), 2, "a classifier needs at least two"),
    Row("train: more per class than there are", train("--per-class", "1000"), 2, "class 'apple' has 30; ask for fewer"),
    Row("train: test limit below the classes", train("--test-limit", "2"), 2, "below the number of classes (3)"),
    Row("train: a bomb and a text file among the images (skipped, trained)", train("--data", "@with bombs"), 0,
        "skipped 2 file(s) that are not readable images"),
    Row("train: full disk for the decoded arrays", train("--data", "@fresh"), 2, "no space left on the disk to write",
        full_disk=lambda w: w.disk, env=lambda w: {"CIFAR_TL_CACHE": w["disk cache"]}),
    Row("train: full disk for the checkpoint", train("--save-checkpoint", "@disk model.pt"), 2,
        "model.pt (about", full_disk=lambda w: w.disk),
    Row("train: full disk for the record", train("--force"), 2, "no space left on the disk to write",
        full_disk=lambda w: w.cache / "runs"),
    # -- run ----------------------------------------------------------------------------------------------
    Row("run: unknown chapter", lambda w: ["run", "99"], 2, "unknown chapter '99'"),
    Row("run: unknown parameter", lambda w: ["run", "01", "-p", "epochs", "3"], 2, "has no parameter 'epochs'"),
    Row("run: negative seed", lambda w: ["run", "01", "-p", "seeds", "[0, -1]"], 2, "parameter seeds takes a list"),
    Row("run: a seed twice", lambda w: ["run", "01", "-p", "seeds", "[1, 1]"], 2, "parameter seeds repeats a subset"),
    Row("run: unknown backbone", lambda w: ["run", "01", "-p", "backbone", "vgg99"], 2, "unknown backbone 'vgg99'"),
    Row("run: unknown profile", lambda w: ["run", "01", "--profile", "huge"], 2, "unknown profile 'huge'"),
    Row("run: data path missing", lambda w: ["run", "01", "-p", "data", str(w.root / "nowhere")], 2,
        "parameter data"),
    Row("run: full disk for the executed chapter", lambda w: ["run", "01", "--profile", "smoke", "--out", w["executed"]],
        2, "its earlier version is unchanged", full_disk=lambda w: w.disk),
    # -- book ---------------------------------------------------------------------------------------------
    Row("book: unknown profile", lambda w: ["book", "--profile", "huge"], 2, "unknown profile 'huge'"),
    Row("book: --reuse-smoke missing", lambda w: ["book", "--reuse-smoke", str(w.root / "nowhere")], 2,
        "is not a folder of executed chapters"),
    Row("book: no chapter at a time", lambda w: ["book", "--jobs", "0"], 2, "--jobs must be at least 1, not 0"),
    Row("book: full disk for the build", lambda w: ["book", "--profile", "smoke", "--build-dir", w["disk build"]], 2,
        "no space left on the disk to write", full_disk=lambda w: w.disk),
    # -- campaign -----------------------------------------------------------------------------------------
    Row("campaign: unknown recipe", lambda w: ["campaign", "--recipe", "magic", "--results", str(w.results)], 2,
        "unknown recipe 'magic'"),
    Row("campaign: --max-runs 0", lambda w: ["campaign", "--max-runs", "0"], 2, "--max-runs: must be at least 1"),
    Row("campaign: --status with --commands", lambda w: ["campaign", "--status", "--commands"], 2,
        "not allowed with argument"),
    Row("campaign: data path missing", lambda w: ["campaign", "--results", str(w.results), "--max-runs", "1",
                                                  "--data", str(w.root / "nowhere")], 2, "does not exist"),
    # -- results ------------------------------------------------------------------------------------------
    Row("results: folder missing", lambda w: ["results", str(w.root / "nowhere")], 2, "is not a folder of run records"),
    Row("results: a file, not a folder", lambda w: ["results", w["notes.txt"]], 2, "is not a folder of run records"),
    Row("results: no records", lambda w: ["results", w["no records"]], 2, "no run records"),
    Row("results: garbled and cut-short records", lambda w: ["results", w["garbled records"]], 2, "no run records"),
    Row("results: unknown base recipe", lambda w: ["results", str(w.results), "--base", "magic"], 2,
        "unknown recipe 'magic'"),
    # -- predict ------------------------------------------------------------------------------------------
    Row("predict: checkpoint missing", lambda w: ["predict", "--checkpoint", str(w.root / "no.pt"), w["good.png"]], 2,
        "no.pt does not exist"),
    Row("predict: checkpoint is a text file", lambda w: ["predict", "--checkpoint", w["notes.txt"], w["good.png"]], 2,
        "not a PyTorch file"),
    Row("predict: checkpoint with code in it", lambda w: ["predict", "--checkpoint", w["code.pt"], w["good.png"]], 2,
        "it asks to run code or build objects that a checkpoint never holds; refused without running any of it"),
    Row("predict: a bare pickle with code in it", lambda w: ["predict", "--checkpoint", w["pickle.pt"], w["good.png"]],
        2, "it asks to run code"),
    Row("predict: checkpoint cut short", lambda w: ["predict", "--checkpoint", w["cut.pt"], w["good.png"]], 2,
        "is not a cifar-tl checkpoint"),
    Row("predict: image missing", lambda w: ["predict", "--checkpoint", w["good.pt"], str(w.root / "no.png")], 2,
        "no.png does not exist"),
    Row("predict: image is a folder", lambda w: ["predict", "--checkpoint", w["good.pt"], w["folder.png"]], 2,
        "is not a file"),
    Row("predict: empty image", lambda w: ["predict", "--checkpoint", w["good.pt"], w["empty.png"]], 2,
        "is empty (0 bytes)"),
    Row("predict: text named .png", lambda w: ["predict", "--checkpoint", w["good.pt"], w["text.png"]], 2,
        "not an image Pillow knows"),
    Row("predict: image claiming 60,000 x 60,000 pixels", lambda w: ["predict", "--checkpoint", w["good.pt"],
                                                                      w["huge.png"]], 2, "claims 3,600,000,000 pixels"),
    Row("predict: image cut short", lambda w: ["predict", "--checkpoint", w["good.pt"], w["cut.png"]], 2,
        "cut short or damaged"),
    Row("predict: --top 0", lambda w: ["predict", "--checkpoint", w["good.pt"], "--top", "0", w["good.png"]], 2,
        "--top: must be at least 1"),
    # -- app ----------------------------------------------------------------------------------------------
    Row("app: folder missing", lambda w: ["app", "--checkpoints", str(w.root / "nowhere")], 2, "does not exist"),
    Row("app: no checkpoints in the folder", lambda w: ["app", "--checkpoints", w["no checkpoints"]], 2,
        "holds no *.pt checkpoint"),
    Row("app: only unreadable and hostile checkpoints", lambda w: ["app", "--checkpoints", w["bad checkpoints"]], 2,
        "none of the 5 checkpoint(s) in"),
    Row("app: port 0", lambda w: ["app", "--port", "0"], 2, "--port: must be at least 1"),
    Row("app: port beyond 65535", lambda w: ["app", "--port", "99999"], 2, "a port is at most 65535"),
    # -- a chapter's parameters (its first code cell) -----------------------------------------------------
    Row("parameter: profile not a string", lambda w: dict(profile=3), 2, "parameter profile takes", setup=True),
    Row("parameter: unknown profile", lambda w: dict(profile="huge"), 2, "unknown profile 'huge'", setup=True),
    Row("parameter: negative seed", lambda w: dict(seeds=[0, -1]), 2, "parameter seeds takes", setup=True),
    Row("parameter: seed beyond 32 bits", lambda w: dict(seeds=[2**40]), 2, "from 0 to 4294967295", setup=True),
    Row("parameter: a seed twice", lambda w: dict(seeds=[0, 0]), 2, "repeats a subset", setup=True),
    Row("parameter: seeds a float", lambda w: dict(seeds=1.5), 2, "parameter seeds takes", setup=True),
    Row("parameter: seeds a string", lambda w: dict(seeds="0,1"), 2, "parameter seeds takes", setup=True),
    Row("parameter: seeds True", lambda w: dict(seeds=True), 2, "parameter seeds takes", setup=True),
    Row("parameter: no seeds", lambda w: dict(seeds=[]), 2, "parameter seeds takes", setup=True),
    Row("parameter: backbone None", lambda w: dict(backbone=None), 2, "parameter backbone takes", setup=True),
    Row("parameter: unknown backbone", lambda w: dict(backbone="vgg99"), 2, "unknown backbone 'vgg99'", setup=True),
    Row("parameter: data a number", lambda w: dict(data=42), 2, "parameter data takes a path", setup=True),
    Row("parameter: data path missing", lambda w: dict(data=str(w.root / "nowhere")), 2, "does not exist", setup=True),
    Row("parameter: CIFAR_TL_DATA missing", lambda w: dict(), 2, "CIFAR_TL_DATA: data path",
        env=lambda w: {"CIFAR_TL_DATA": str(w.root / "nowhere")}, setup=True),
]


def test_the_table_has_30_rows_or_more_across_every_command():
    assert len(ROWS) >= 30 and len({row.id for row in ROWS}) == len(ROWS)
    kinds = {row.id.split(":")[0] for row in ROWS}
    assert {"train", "run", "book", "campaign", "results", "predict", "app", "parameter"} <= kinds


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_bad_or_hostile_input(row: Row, world: World, monkeypatch, capsys):
    monkeypatch.setenv("CIFAR_TL_CACHE", str(world.cache))
    monkeypatch.setenv("CIFAR_TL_DATA", str(world.tiny))
    monkeypatch.delenv("CIFAR_TL_RESULTS", raising=False)  # `campaign` sets it; restored after the row
    monkeypatch.delenv("CIFAR_TL_DEBUG", raising=False)
    for name, value in (row.env(world) if row.env else {}).items():
        monkeypatch.setenv(name, str(value))

    def no_training(*args, **kwargs):
        raise AssertionError("a campaign row started training")

    if row.id.startswith("campaign"):
        monkeypatch.setattr("cifar_tl.records.runner.train", no_training)
    before = faults.snapshot(*world.roots)
    if row.full_disk is not None:
        faults.writes_fail_under(monkeypatch, row.full_disk(world))
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        if row.setup:
            try:
                chapter.setup(**{"profile": "smoke", **row.args(world)})
                status = 0
            except UserError as exc:
                status = 2
                print(f"cifar-tl: error: {exc}", file=sys.stderr)
        else:
            status = cli.main(row.args(world))
    finally:
        signal.signal(signal.SIGTERM, sigterm)
    out, err = capsys.readouterr()

    assert status == row.status, err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if "cifar-tl: error:" in line]
    if row.status:
        assert len(errors) == 1 and errors[0].startswith("cifar-tl: error: "), err
        assert row.message in errors[0], (row.message, errors[0])
        assert out == ""
        shown = errors[0]
    else:
        assert not errors and row.message in err, err
        shown = next(line for line in err.splitlines() if row.message in line)
    faults.assert_nothing_half_written(before, *world.roots)
    assert not world.marker.exists(), "a hostile file's code ran"
    if os.environ.get("CIFAR_TL_SHOW_TABLE"):
        with capsys.disabled():
            print(f"\n| {row.id} | {status} | {shown} |")


def test_nothing_climbed_out_of_the_archive(world):
    assert not (world.root.parent / "outside").exists() and not Path("/etc/cifar-tl-escaped.png").exists()
