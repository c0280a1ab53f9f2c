"""Checkpoints and predictions: a saved model loads back identical, `cifar-tl predict` classifies
image files of any size, and anything that is not a checkpoint or an image gets one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cifar_tl.core.errors import UserError
from cifar_tl.data.images import read_image
from cifar_tl.models.backbones import create_model
from cifar_tl.models.checkpoints import FORMAT, load_checkpoint, save_checkpoint
from cifar_tl.models.predict import predict_images
from cifar_tl.training.evaluate import compute_outputs

TINY_CLASSES = ["apple", "banana", "cherry"]  # conftest's tiny_dataset


def cli(*args: str):
    """`cifar-tl ARGS` in this process (conftest.run_cli): exit status, stdout and stderr as a user sees them,
    without starting an interpreter per call."""
    from conftest import run_cli

    return run_cli(*args)


def fake_record(data_name: str = "tiny") -> dict:
    return {"name": "a-run", "metrics": {"test_accuracy": 0.5, "test_images": 30},
            "data": {"name": data_name, "checksum": "sha256:0123", "image_shape": [32, 32, 3]}}


@pytest.mark.parametrize("backbone", ["simple_cnn", "efficientnet_lite0"])
def test_save_and_load_give_identical_logits(tmp_path, backbone):
    torch.manual_seed(0)
    model = create_model(backbone, 3, pretrained=False)
    with torch.no_grad():  # non-default BatchNorm statistics, so that they must round-trip too
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 1.5)
    model.eval()
    path = save_checkpoint(tmp_path / "model.pt", model, TINY_CLASSES, 32, fake_record())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]  # no temporary file left

    loaded, info = load_checkpoint(path)
    x = torch.randn(4, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(model(x), loaded(x))
    assert info["format"] == FORMAT and info["version"] == 1
    assert info["backbone"] == backbone and info["classes"] == TINY_CLASSES and info["image_size"] == 32
    assert info["mean"] == list(model.mean) and info["std"] == list(model.std)
    assert info["record"] == {"name": "a-run", "test_accuracy": 0.5, "test_images": 30, "data_name": "tiny",
                              "data_checksum": "sha256:0123"}
    assert info["parameters"] == sum(p.numel() for p in model.parameters())
    assert info["file_bytes"] == path.stat().st_size


def test_an_interrupted_save_keeps_the_old_checkpoint(tmp_path, interrupted_writes):
    """Ctrl-C while a checkpoint is being written over an older one, half of its bytes already on disk: the
    older checkpoint still loads, unchanged, and no temporary file is left. (A checkpoint written straight to
    its name would be left half-written here.)"""
    torch.manual_seed(0)
    old = create_model("simple_cnn", 3, pretrained=False).eval()
    path = save_checkpoint(tmp_path / "model.pt", old, TINY_CLASSES, 32, fake_record())
    before = path.read_bytes()
    torch.manual_seed(1)
    new = create_model("simple_cnn", 3, pretrained=False).eval()
    interrupted_writes.arm(tmp_path, suffix=".pt")
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, new, TINY_CLASSES, 32, fake_record())
    assert interrupted_writes.fired, "the checkpoint was not written through torch.save or open(): nothing proved"
    interrupted_writes.monkeypatch.undo()
    assert path.read_bytes() == before
    loaded, _ = load_checkpoint(path)
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(loaded(x), old(x))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_weights_that_do_not_fit_are_not_a_checkpoint(tmp_path):
    model = create_model("simple_cnn", 3, pretrained=False)
    path = save_checkpoint(tmp_path / "model.pt", model, TINY_CLASSES, 32, fake_record())
    payload = torch.load(path, weights_only=True)
    payload["classes"] = ["a", "b"]  # a 3-class head for 2 classes
    torch.save(payload, path)
    with pytest.raises(UserError, match=r"is not a cifar-tl checkpoint \(its weights do not fit simple_cnn.*--save-checkpoint"):
        load_checkpoint(path)


@pytest.fixture(scope="module")
def trained(tiny_dataset, tmp_path_factory):
    """`cifar-tl train --save-checkpoint` on the tiny 3-class dataset: (checkpoint path, record)."""
    path = tmp_path_factory.mktemp("checkpoints") / "simple.pt"
    done = cli("train", "--backbone", "simple_cnn", "--recipe", "linear_probe", "--profile", "smoke",
               "--per-class", "10", "--val-per-class", "5", "--epochs", "1", "--data", str(tiny_dataset),
               "--save-checkpoint", str(path), "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    assert path.is_file(), done.stderr[-3000:]
    return path, json.loads(done.stdout)


def test_train_saves_a_checkpoint_with_its_record(trained):
    path, record = trained
    _, info = load_checkpoint(path)
    assert info["backbone"] == "simple_cnn" and info["classes"] == TINY_CLASSES == record["data"]["classes"]
    assert info["image_size"] == record["config"]["image_size"] == 32
    assert info["record"]["name"] == record["name"]
    assert info["record"]["test_accuracy"] == record["metrics"]["test_accuracy"]
    assert info["record"]["test_images"] == record["metrics"]["test_images"] == 30
    assert info["record"]["data_name"] == record["data"]["name"]
    assert info["record"]["data_checksum"] == record["data"]["checksum"]  # the app finds its examples by it


@pytest.fixture
def images(tiny_dataset, tmp_path) -> list[Path]:
    """A 300x200 JPEG (not the training size) and a 32x32 PNG from the tiny dataset's test split."""
    rng = np.random.default_rng(1)
    pixels = np.clip(np.array([110, 120, 75]) + rng.integers(-40, 41, size=(200, 300, 3)), 0, 255).astype(np.uint8)
    jpeg = tmp_path / "photo.jpg"
    Image.fromarray(pixels).save(jpeg, quality=90)
    png = tmp_path / "small.png"
    Image.open(tiny_dataset / "test" / "cherry" / "0000.png").save(png)
    return [jpeg, png]


def test_predict_json_gives_every_class_sorted(trained, images):
    path, _ = trained
    done = cli("predict", "--checkpoint", str(path), *map(str, images), "--top", "3", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout)  # stdout is exactly the JSON list
    assert isinstance(results, list) and len(results) == 2
    for result, image in zip(results, images):
        assert set(result) == {"image", "predictions"} and result["image"] == str(image)
        predictions = result["predictions"]
        assert all(set(p) == {"label", "probability"} for p in predictions)
        assert sorted(p["label"] for p in predictions) == TINY_CLASSES
        probabilities = [p["probability"] for p in predictions]
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-4)
        assert probabilities == sorted(probabilities, reverse=True)


def test_predict_clips_top_and_prints_a_table(trained, images):
    path, _ = trained
    done = cli("predict", "--checkpoint", str(path), *map(str, images), "--top", "10", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    assert [len(r["predictions"]) for r in json.loads(done.stdout)] == [3, 3]  # 10 clipped to 3 classes

    done = cli("predict", "--checkpoint", str(path), str(images[0]), "--top", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0] == str(images[0]) and len(lines) == 3
    assert lines[1].split()[0] == "1." and lines[1].split()[1] in TINY_CLASSES and lines[1].endswith("%")


@pytest.mark.parametrize("width, height", [(96, 32), (32, 96), (300, 100)], ids=["wide", "tall", "large"])
def test_a_non_square_image_is_predicted_from_its_centre_square(tmp_path, width, height):
    """`predict` centre-crops an image of any shape to a square (README): a picture whose middle third is
    green and whose outer thirds are red and blue is the model input of a plain green square."""
    from cifar_tl.models.predict import model_input

    green, third = (0, 200, 0), max(width, height) // 3
    picture = Image.new("RGB", (width, height), green)
    if width > height:
        picture.paste((230, 0, 0), (0, 0, third, height))
        picture.paste((0, 0, 230), (2 * third, 0, width, height))
    else:
        picture.paste((230, 0, 0), (0, 0, width, third))
        picture.paste((0, 0, 230), (0, 2 * third, width, height))
    picture.save(tmp_path / "banded.png")
    info = {"image_size": 32, "source_image_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3}
    banded = model_input([read_image(tmp_path / "banded.png")], info)
    plain = model_input([np.array(Image.new("RGB", (32, 32), green))], info)
    assert banded.shape == plain.shape == (1, 3, 32, 32)
    torch.testing.assert_close(banded[..., 2:-2, 2:-2], plain[..., 2:-2, 2:-2], atol=0.1, rtol=0)


def test_prediction_preprocesses_as_training_did(trained, tiny_dataset):
    """A 32x32 image file gets exactly the logits that evaluation computed for the same pixels."""
    model, info = load_checkpoint(trained[0])
    file = tiny_dataset / "test" / "banana" / "0003.png"
    pixels = torch.from_numpy(read_image(file)[None])
    logits = compute_outputs(model, pixels, info["image_size"], 32, torch.device("cpu"))
    expected = torch.softmax(logits, 1)[0]
    (result,) = predict_images(model, info, [file], top_k=3)
    for p in result["predictions"]:
        assert p["probability"] == pytest.approx(expected[TINY_CLASSES.index(p["label"])].item(), abs=1e-5)


@pytest.fixture
def bad_inputs(tmp_path, trained, images) -> dict:
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint\n")
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(3)}, plain)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(np.random.default_rng(0).bytes(2000))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no checkpoints here\n")
    checkpoint, png = str(trained[0]), str(images[1])
    return {
        "text file as checkpoint": (["predict", "--checkpoint", str(text), png], "is not a cifar-tl checkpoint"),
        "torch file of a plain dict": (["predict", "--checkpoint", str(plain), png], "is not a cifar-tl checkpoint"),
        "image that does not decode": (["predict", "--checkpoint", checkpoint, str(broken)], "broken.jpg could not be read"),
        "missing image": (["predict", "--checkpoint", checkpoint, str(tmp_path / "nowhere.png")], "nowhere.png does not exist"),
        "missing app folder": (["app", "--checkpoints", str(tmp_path / "no-such-dir")], "no-such-dir does not exist"),
        "app folder without checkpoints": (["app", "--checkpoints", str(empty)], "holds no *.pt checkpoint"),
    }


@pytest.mark.parametrize("case", [
    "text file as checkpoint", "torch file of a plain dict", "image that does not decode", "missing image",
    "missing app folder", "app folder without checkpoints",
])
def test_bad_input_gets_one_line_and_exit_2(bad_inputs, case, one_error_line):
    args, expected = bad_inputs[case]
    line = one_error_line(cli(*args), expected)
    if "checkpoint" in case and "app" not in case:
        assert "--save-checkpoint" in line  # says how to make one
