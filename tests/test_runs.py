"""Runs: config checks, the record and its name, reading back instead of re-running, determinism.

Unless a test says otherwise its runs are pinned to the CPU in fp32 (`_config`, `_run`): exact equality of
metrics is a promise of the CPU only (a GPU's cuDNN picks algorithms per run). The test of a complete record
is about the precision and device a run resolves to: it runs on the default device, asks for
`--precision` (default auto) and expects what `resolve_precision` makes of it, on this CPU and on one
simulated with native bf16 (AVX-512 BF16).
"""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch

from cifar_tl.book.chapter import run_seeds
from cifar_tl.core.device import pick_device, resolve_precision
from cifar_tl.core.errors import UserError
from cifar_tl.core.files import cache_dir
from cifar_tl.data.sources import load_dataset, source_checksum
from cifar_tl.data.subsets import balanced_subset
from cifar_tl.records.identity import code_version, make_config
from cifar_tl.records.runner import run
from cifar_tl.records.store import read_record, record_path
from cifar_tl.training.recipes import RECIPES
import cifar_tl.core.device as device_module
import cifar_tl.records.runner as runs_module


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Each test gets its own run records (and data cache), so no test reads another's record."""
    monkeypatch.setenv("CIFAR_TL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def count_training(monkeypatch):
    """Wrap cifar_tl.records.runner.train to count how often a run really trains."""
    calls = []
    original = runs_module.train

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(runs_module, "train", counting)
    return calls


def _forbid_training(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("trained again instead of reading the record back")

    monkeypatch.setattr(runs_module, "train", refuse)


def _config(data, recipe="linear_probe", backbone="simple_cnn", **overrides):
    """A small smoke config, fp32 on the CPU unless `overrides` say otherwise."""
    options = dict(per_class=5, val_per_class=5, seed=0, profile="smoke", image_size=32, epochs=2,
                   precision="fp32", device="cpu")
    options.update(overrides)
    return make_config(recipe, backbone, data=str(data), **options)


def _run(config, **options):
    """`run` on the CPU, quietly."""
    return run(config, progress=False, device="cpu", **options)


def _without_volatile(record):
    """The record without what legitimately differs between two runs of one config (clock times)."""
    return {k: v for k, v in record.items() if k not in ("created", "timing")}


# -- make_config ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"recipe": "no_such_recipe"}, "unknown recipe 'no_such_recipe'.*linear_probe"),
        ({"profile": "huge"}, "unknown profile 'huge'.*smoke"),
        ({"backbone": "vgg99"}, "unknown backbone 'vgg99'.*efficientnet_lite0"),
        ({"image_size": 0}, "--image-size"),
        ({"image_size": -32}, "--image-size"),
        ({"image_size": 8}, "--image-size must be at least 16"),
        ({"epochs": 0}, "--epochs"),
        ({"epochs": -1}, "--epochs"),
        ({"per_class": 0}, "--per-class"),
        ({"per_class": -5}, "--per-class"),
        ({"per_class": 2.5}, "--per-class"),
        ({"seed": -1}, "--seed"),
        ({"test_limit": 0}, "--test-limit"),
    ],
)
def test_make_config_rejects_bad_arguments(tiny_dataset, overrides, message):
    options = {"recipe": "linear_probe", "backbone": "simple_cnn", "data": str(tiny_dataset), **overrides}
    with pytest.raises(UserError, match=message):
        make_config(**options)


def test_make_config_fills_from_recipe_and_profile(tiny_dataset, monkeypatch):
    smoke = make_config("linear_probe", "efficientnet_lite0", data=str(tiny_dataset))
    assert smoke.image_size == 32 and smoke.test_limit == 500 and smoke.epochs is None
    assert smoke.per_class == 100 and smoke.val_per_class == 50 and smoke.data == str(tiny_dataset)
    full = make_config("linear_probe", "efficientnet_lite0", profile="full", data=str(tiny_dataset))
    assert full.image_size == 224 and full.test_limit is None
    # the from-scratch recipe fixes its own input size whatever the profile
    assert make_config("scratch", "simple_cnn", profile="full", data=str(tiny_dataset)).image_size == 32
    assert make_config("linear_probe", "simple_cnn", image_size=64, data=str(tiny_dataset)).image_size == 64
    assert make_config("linear_probe", "simple_cnn", test_limit=None, data=str(tiny_dataset)).test_limit is None
    monkeypatch.setenv("CIFAR_TL_DATA", str(tiny_dataset))
    assert make_config("linear_probe", "simple_cnn").data == str(tiny_dataset)


def test_make_config_rejects_negative_validation_count(tiny_dataset):
    with pytest.raises(UserError, match="val"):
        make_config("linear_probe", "simple_cnn", val_per_class=-1, data=str(tiny_dataset))


# -- a run and its record ----------------------------------------------------------------------------------


@pytest.fixture(params=["no native bf16", "native bf16"])
def cpu_kind(request, monkeypatch, asked_precision):
    """The CPU as `auto` sees it: without bf16 in hardware (an AVX2 CPU: auto means fp32) or with it
    (AVX-512 BF16 or AMX: auto means bf16). Only its flags decide (`cpu_has_native_bf16`), so either is
    simulated here on any CPU. An explicit --precision does not read them: one kind is enough then."""
    if asked_precision != "auto" and request.param == "native bf16":
        pytest.skip("only --precision auto reads the CPU's flags")
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda *args: request.param == "native bf16")
    return request.param


@pytest.mark.precision
@pytest.mark.parametrize(
    "recipe, backbone",
    [("linear_probe", "simple_cnn"), ("finetune_naive", "simple_cnn"), ("linear_probe", "efficientnet_lite0")],
)
def test_smoke_run_writes_a_complete_record(tiny_dataset, recipe, backbone, count_training, cpu_kind,
                                            asked_precision):
    """A run as a user starts it: the default device (the GPU if there is one), `--precision` as asked
    (default auto); the record says which device and which resolved precision ran."""
    device = pick_device(None)
    expected_precision = resolve_precision(asked_precision, device)
    if device.type == "cpu" and asked_precision == "auto":  # what auto means on each kind of CPU
        assert expected_precision == {"no native bf16": "fp32", "native bf16": "bf16"}[cpu_kind]
    config = _config(tiny_dataset, recipe, backbone, precision=asked_precision, device=None)
    assert config.precision == expected_precision
    path = record_path(config)
    assert re.fullmatch(rf"{recipe}-{backbone}-s0-[0-9a-f]{{12}}\.json", path.name)
    assert not path.exists()
    record = run(config, progress=False)
    assert count_training == [1]
    assert path.is_file() and path.parent == cache_dir("runs")
    assert json.loads(path.read_text()) == record
    assert record["name"] == path.stem
    assert record["code_version"] == code_version()

    for key in ("config", "recipe", "data", "weights", "model", "metrics", "history", "timing", "machine"):
        assert key in record, key
    assert record["config"] == {**config.as_dict(), "data": "tiny-dataset"}  # portable: no machine's path
    assert record["config"]["precision"] == record["timing"]["precision"] == expected_precision
    assert record["identity"]["config"]["precision"] == expected_precision
    assert record["identity"]["weights"] == record["weights"]["sha256"]
    assert record["recipe"]["name"] == recipe
    assert [s["epochs"] for s in record["recipe"]["stages"]] == [2]

    data = record["data"]
    classes = ["apple", "banana", "cherry"]
    assert data["checksum"] == source_checksum(str(tiny_dataset))
    assert data["classes"] == classes
    assert data["counts"] == {"train": 15, "val": 15, "test": 30}
    labels = load_dataset(tiny_dataset, progress=False).train_labels
    expected_train, expected_val = balanced_subset(labels, 5, 5, seed=0)
    assert data["train_indices"] == expected_train.tolist()
    assert data["val_indices"] == expected_val.tolist()
    assert data["seed"] == 0

    assert record["weights"]["source"]
    if backbone == "efficientnet_lite0":
        assert record["weights"]["file"] == "efficientnet-lite0-57934424.pth"
    assert record["model"]["groups"][-1] == "head"

    metrics = record["metrics"]
    assert 0 <= metrics["test_accuracy"] <= 1 and 0 <= metrics["val_accuracy"] <= 1
    assert metrics["test_images"] == 30 and metrics["test_limited"] is False
    assert metrics["val_accuracy"] == record["history"][-1]["val_accuracy"]
    assert list(metrics["per_class_accuracy"]) == classes
    confusion = np.array(metrics["confusion_matrix"])
    assert confusion.shape == (3, 3) and confusion.sum() == 30
    assert confusion.sum(1).tolist() == [10, 10, 10]
    assert metrics["test_accuracy"] == pytest.approx(np.trace(confusion) / 30)
    per_class = np.diag(confusion) / 10
    assert list(metrics["per_class_accuracy"].values()) == pytest.approx(per_class.tolist())
    assert len(metrics["test_predictions"]) == len(metrics["test_labels"]) == 30
    if recipe == "linear_probe":  # scikit-learn's probe on the same features, its C chosen on validation
        probe = metrics["sklearn_probe"]
        assert probe["C_grid"] == list(RECIPES["linear_probe"].sklearn_probe) == record["recipe"]["sklearn_probe"]
        assert probe["val_accuracy"] == max(probe["val_accuracy_by_C"])
        assert probe["C"] == probe["C_grid"][probe["val_accuracy_by_C"].index(probe["val_accuracy"])]
        assert 0 <= probe["test_accuracy"] <= 1
    else:
        assert "sklearn_probe" not in metrics and "sklearn_probe" not in record["recipe"]

    history = record["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    for entry in history:
        assert {"train_loss", "val_loss", "train_accuracy", "val_accuracy", "lr"} <= entry.keys()
    trained = ["head"] if recipe == "linear_probe" else record["model"]["groups"]
    assert list(history[0]["lr"]) == trained

    timing = record["timing"]
    assert timing["total_seconds"] > 0 and timing["eval_seconds"] >= 0 and timing["device"] == str(device)
    if recipe == "linear_probe":
        assert timing["feature_seconds"] > 0
    else:
        assert timing["train_images_per_second"] > 0
    machine = record["machine"]
    for key in ("cpu", "cpu_count", "torch", "torchvision", "numpy", "python", "cifar_tl"):
        assert machine[key], key


def test_smoke_run_learns_the_tiny_task(tiny_dataset):
    """The tiny dataset's classes differ in colour: fine-tuning must get them mostly right. The thresholds
    are those measured in fp32 on the CPU, so the run is pinned there (`_config`, `_run`)."""
    # the full profile: the smoke profile would cap the epochs at 2
    config = _config(tiny_dataset, "finetune_naive", profile="full", epochs=8, per_class=20)
    assert config.precision == "fp32"
    record = _run(config)
    assert [s["epochs"] for s in record["recipe"]["stages"]] == [8]
    assert record["metrics"]["test_images"] == 30 and record["metrics"]["test_limited"] is False
    assert record["metrics"]["test_accuracy"] >= 0.8
    assert record["history"][-1]["val_accuracy"] >= 0.8


def test_test_limit_caps_and_says_so(tiny_dataset):
    record = _run(_config(tiny_dataset, test_limit=6))
    metrics = record["metrics"]
    assert metrics["test_images"] == 6 and metrics["test_limited"] is True
    assert np.array(metrics["confusion_matrix"]).sum(1).tolist() == [2, 2, 2]
    assert record["data"]["counts"]["test"] == 6


def test_record_name_is_stable_and_names_the_config(tiny_dataset, make_tar_gz, tmp_path):
    config = _config(tiny_dataset)
    assert record_path(config) == record_path(_config(tiny_dataset))
    others = {
        record_path(_config(tiny_dataset, seed=1)),
        record_path(_config(tiny_dataset, per_class=6)),
        record_path(_config(tiny_dataset, epochs=1)),
        record_path(_config(tiny_dataset, image_size=48)),
        record_path(_config(tiny_dataset, "finetune_naive")),
    }
    assert record_path(config) not in others and len(others) == 5
    # the data path is not part of the name, its content is: one archive in two places, one name
    archive = make_tar_gz(tiny_dataset, tmp_path / "a.tar.gz")
    (tmp_path / "elsewhere").mkdir()
    copy = shutil.copy(archive, tmp_path / "elsewhere" / "b.tar.gz")
    assert record_path(_config(archive)) == record_path(_config(copy))
    assert record_path(_config(archive)) != record_path(config)


def test_existing_record_is_read_back_without_training(tiny_dataset, monkeypatch):
    config = _config(tiny_dataset)
    first = _run(config)
    _forbid_training(monkeypatch)
    second = _run(config)
    assert second == first
    # the same arguments made again name the same record
    assert _run(_config(tiny_dataset)) == first


def test_force_runs_again(tiny_dataset, count_training):
    config = _config(tiny_dataset)
    first = _run(config)
    second = _run(config, force=True)
    assert count_training == [1, 1]
    assert second["created"] >= first["created"]
    assert json.loads(record_path(config).read_text()) == second


def test_return_model_runs_and_returns_the_trained_model(tiny_dataset, count_training):
    config = _config(tiny_dataset)
    first = _run(config)
    record, model = _run(config, return_model=True)
    assert count_training == [1, 1]  # a record alone has no model: it trains once more ...
    assert model.name == "simple_cnn" and model.head.out_features == 3
    assert record["model"]["groups"] == model.group_names()
    assert json.loads(record_path(config).read_text()) == first  # ... without replacing the record
    again, cached = _run(config, return_model=True)
    assert count_training == [1, 1]  # the second time the model is read back from beside the record
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), cached.state_dict().values()))


@pytest.mark.parametrize("recipe", ["finetune_naive", "linear_probe"])
def test_same_config_gives_identical_results_on_cpu(tiny_dataset, recipe):
    config = _config(tiny_dataset, recipe)
    first = _run(config, force=True)
    second = _run(config, force=True)
    assert first["metrics"] == second["metrics"]
    assert first["history"] == second["history"]
    assert _without_volatile(first) == _without_volatile(second)


def test_different_seeds_give_different_subsets(tiny_dataset):
    records = run_seeds("linear_probe", "simple_cnn", "smoke", data=str(tiny_dataset), per_class=5,
                        val_per_class=5, epochs=1, progress=False)
    assert [r["config"]["seed"] for r in records] == [0, 1]  # the smoke profile's seeds
    assert records[0]["data"]["train_indices"] != records[1]["data"]["train_indices"]
    assert records[0]["name"] != records[1]["name"]


@pytest.mark.parametrize("damage", ["truncated", "empty", "other identity"])
def test_a_damaged_or_stale_record_is_not_trusted(tiny_dataset, count_training, damage, capsys):
    config = _config(tiny_dataset)
    path = record_path(config)
    first = _run(config)
    text = path.read_text()
    if damage == "truncated":
        path.write_text(text[: len(text) // 2])
    elif damage == "empty":
        path.write_text("")
    else:
        path.write_text(json.dumps({**first, "identity": {**first["identity"], "weights": "0" * 64}}))
    assert damage == "other identity" or read_record(path) is None
    again = _run(config)
    assert count_training == [1, 1]
    assert "running again" in capsys.readouterr().err
    assert json.loads(path.read_text()) == again
    assert again["metrics"] == first["metrics"]


def test_no_temporary_files_are_left_behind(tiny_dataset):
    for seed in (0, 1):
        _run(_config(tiny_dataset, seed=seed))
    _run(_config(tiny_dataset), force=True)
    runs_dir = cache_dir("runs")
    assert len(list(runs_dir.glob("*.json"))) == 2
    leftovers = [p.name for p in cache_dir().rglob("*") if p.name.startswith(".tmp-")]
    assert leftovers == []


def test_an_interrupted_write_keeps_the_old_record(tiny_dataset, interrupted_writes):
    """Ctrl-C while the new record is being written, with half of its bytes already on disk: the old record
    is still there, whole, and no temporary file is left. (A record written straight to its name would be
    left half-written here.)"""
    config = _config(tiny_dataset)
    first = _run(config)
    path = record_path(config)
    interrupted_writes.arm(path.parent, suffix=".json")
    with pytest.raises(KeyboardInterrupt):
        _run(config, force=True)
    assert interrupted_writes.fired, "the record was not written through open()/pathlib: the test proved nothing"
    assert interrupted_writes.hit.parent == path.parent
    assert json.loads(path.read_text()) == first
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".tmp-")]


def test_zero_validation_images_is_refused_clearly(tiny_dataset):
    with pytest.raises(UserError, match="--val-per-class must be a positive whole number"):
        _run(_config(tiny_dataset, val_per_class=0))


def test_train_small_test_large_trains_at_the_smaller_size_and_evaluates_at_the_input_size(tiny_dataset, monkeypatch):
    """`train_scale`: every batch the trainer sees is at the fraction of the input size, the final validation and
    the test images at the input size itself; a recipe without it keeps its record's identity."""
    from dataclasses import replace

    import cifar_tl.training.evaluate as evaluate_module
    from cifar_tl.records.identity import current_recipe, recipe_definition

    sizes = {"trained": [], "evaluated": []}
    real_train, real_outputs = runs_module.train, evaluate_module.compute_outputs
    monkeypatch.setattr(runs_module, "train", lambda *a, **k: sizes["trained"].append(a[7]) or real_train(*a, **k))
    monkeypatch.setattr(evaluate_module, "compute_outputs",
                        lambda model, images, size, *a, **k: sizes["evaluated"].append(size)
                        or real_outputs(model, images, size, *a, **k))
    small = replace(RECIPES["finetune_naive"], name="finetune_small", train_scale=0.5)
    monkeypatch.setitem(RECIPES, "finetune_small", small)
    record = _run(_config(tiny_dataset, "finetune_small", image_size=64))
    assert sizes["trained"] == [32] and set(sizes["evaluated"]) == {64}  # validation and test, at 64
    assert record["recipe"]["train_scale"] == 0.5 and record["config"]["image_size"] == 64
    assert small.train_size(224) == 112 and RECIPES["finetune_naive"].train_size(224) == 224
    plain = _config(tiny_dataset, "finetune_naive")
    assert "train_scale" not in recipe_definition(current_recipe(plain))  # unset: not part of any identity
    with pytest.raises(ValueError, match="train_scale is a fraction"):
        replace(small, train_scale=1.5)


def test_eval_sizes_keeps_the_test_predictions_at_other_input_sizes(tiny_dataset, monkeypatch):
    """Appendix A1's domain gap from a record: once trained, the test images are classified at each extra size
    (the model unchanged), the predictions kept by size; the run's own size is the record's test_predictions.
    A config without eval_sizes keeps the identity it had before the option existed."""
    import cifar_tl.training.evaluate as evaluate_module

    plain = _config(tiny_dataset)
    assert "eval_sizes" not in plain.key()
    swept = _config(tiny_dataset, eval_sizes=[48, 32, 16, 48])
    assert swept.eval_sizes == (16, 32, 48) and swept.key()["eval_sizes"] == [16, 32, 48]
    record = _run(swept)
    by_size = record["metrics"]["test_predictions_by_size"]
    assert set(by_size) == {"16", "48"}  # 32 is the run's own: its predictions are test_predictions
    assert all(len(p) == record["metrics"]["test_images"] for p in by_size.values())
    assert record["timing"]["eval_sizes_seconds"] >= 0
    assert record["name"] != _run(plain)["name"] and "test_predictions_by_size" not in _run(plain)["metrics"]
    # the record's predictions are the model's at that size: fed at 32 through the same route, they are the record's own
    _, model = _run(swept, return_model=True)
    from cifar_tl.data.sources import load_dataset as load

    images = load(str(tiny_dataset), progress=False).test_images[record["metrics"]["test_indices"]]
    at_48 = evaluate_module.compute_outputs(model, torch.as_tensor(images), 48, 64, pick_device("cpu")).argmax(1)
    assert at_48.tolist() == by_size["48"]
    with pytest.raises(UserError, match="--eval-sizes must be input sizes of at least 16 pixels"):
        _config(tiny_dataset, eval_sizes=[8, 32])
    with pytest.raises(UserError, match="--eval-sizes"):
        _config(tiny_dataset, eval_sizes=[])
