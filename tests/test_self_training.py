"""Self-training on the unlabelled pool: strong augmentation, the pool, the pseudo-label selection, labels that
never reach the loop, the record's accounting, unchanged identities of the other recipes, and chapter 13."""

from __future__ import annotations

import inspect
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from cifar_tl.data import augment
from cifar_tl.data.subsets import balanced_subset
from cifar_tl.records.identity import (RunConfig, current_recipe, identity, make_config, recipe_definition,
                                       record_name, stale_reason)
from cifar_tl.records.runner import run
from cifar_tl.records.store import committed_records
from cifar_tl.training import self_training
from cifar_tl.training.profiles import PROFILES, as_run
from cifar_tl.training.recipes import RECIPES, Recipe, SelfTraining, Stage
import cifar_tl.records.runner as runs_module

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CIFAR_TL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CIFAR_TL_RENDER_ONLY", raising=False)


def _batch(n=6, side=16, seed=0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, side, side, 3), dtype=np.uint8))


# -- strong augmentation -----------------------------------------------------------------------------------------


def test_strong_augmentation_keeps_shape_and_dtype_and_is_reproducible_with_a_seed():
    batch = _batch()
    out = augment.strong_augment(batch, 24, MEAN, STD, torch.Generator().manual_seed(3))
    assert out.shape == (6, 3, 24, 24) and out.dtype == torch.float32
    assert batch.dtype == torch.uint8  # the stored images are untouched
    again = augment.strong_augment(batch, 24, MEAN, STD, torch.Generator().manual_seed(3))
    assert torch.equal(out, again)
    other = augment.strong_augment(batch, 24, MEAN, STD, torch.Generator().manual_seed(4))
    assert not torch.equal(out, other)
    crop_flip = augment.random_crop_flip(batch, 24, MEAN, STD, torch.Generator().manual_seed(3))
    assert not torch.allclose(out, crop_flip)  # jitter and cutout on top of the same crop
    pixels = out * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5  # still images in [0, 1] before normalisation


def test_cutout_greys_one_square_per_image_and_jitter_stays_in_range():
    x = torch.zeros(5, 3, 20, 20)
    out = augment.cutout(x, torch.Generator().manual_seed(0), fraction=0.5, fill=0.5)
    hidden = (out == 0.5).all(1).sum((1, 2))
    assert ((hidden > 0) & (hidden <= 100)).all()  # a 10x10 square, clipped at the border
    x = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    jittered = augment.colour_jitter(x, torch.Generator().manual_seed(2))
    assert jittered.shape == x.shape and 0 <= jittered.min() and jittered.max() <= 1
    assert not torch.allclose(jittered, x)


def test_a_recipe_can_train_with_strong_augmentation():
    from cifar_tl.models.backbones import create_model
    from cifar_tl.training.loop import train

    torch.manual_seed(0)
    model = create_model("simple_cnn", 3, pretrained=False)
    recipe = Recipe("strong", "test", (Stage(epochs=1, lr=1e-3),), augment="strong", batch_size=8)
    x, y = _batch(16, 32), torch.arange(16) % 3
    result = train(model, recipe, recipe.stages, x, y, x[:6], y[:6], 32, torch.device("cpu"), 0, progress=False)
    assert len(result.history) == 1 and result.images_trained == 16


# -- the pool and the selection ----------------------------------------------------------------------------------


def test_the_pool_is_the_rest_of_the_training_split_and_takes_no_labels():
    labelled, validation = np.array([0, 3, 5]), np.array([1, 8])
    everything = self_training.pool_indices(10, labelled, validation, None, seed=0)
    assert everything.tolist() == [2, 4, 6, 7, 9]
    part = self_training.pool_indices(10, labelled, validation, 3, seed=0)
    assert len(part) == 3 and set(part) <= set(everything) and list(part) == sorted(part)
    assert part.tolist() == self_training.pool_indices(10, labelled, validation, 3, seed=0).tolist()


def test_the_loop_is_handed_the_pools_images_and_only_the_subsets_labels(tiny_dataset, monkeypatch):
    """What a run really passes to the self-training loop (spied on, not read from parameter names): the pool
    is every training image outside the labelled and validation subsets, as images; the only labels handed
    over are those of the labelled and validation subsets."""
    name = _register(monkeypatch, rounds=1)
    handed = {}
    real_self_train = self_training.self_train

    def spy(*args, **kwargs):
        handed.update(inspect.signature(real_self_train).bind(*args, **kwargs).arguments)
        return real_self_train(*args, **kwargs)

    monkeypatch.setattr(self_training, "self_train", spy)
    record = run(_config(tiny_dataset, name), progress=False, device="cpu")
    dataset = runs_module._dataset(str(tiny_dataset), False)
    train_idx, val_idx = np.array(record["data"]["train_indices"]), np.array(record["data"]["val_indices"])
    pool = np.setdiff1d(np.arange(len(dataset.train_labels)), np.concatenate([train_idx, val_idx]))
    assert len(pool) == 60
    assert torch.equal(handed["pool_images"], torch.from_numpy(dataset.train_images[pool]))
    assert torch.equal(handed["y_train"], torch.from_numpy(dataset.train_labels[train_idx]))
    assert torch.equal(handed["y_val"], torch.from_numpy(dataset.train_labels[val_idx]))
    integer_tensors = [k for k, v in handed.items() if isinstance(v, torch.Tensor) and not v.is_floating_point()
                       and v.dtype != torch.uint8]
    assert sorted(integer_tensors) == ["y_train", "y_val"], integer_tensors  # no other labels reach the loop


def test_selection_keeps_the_most_confident_of_each_class_above_the_threshold():
    probabilities = torch.tensor([
        [0.90, 0.05, 0.05],  # 0: class 0
        [0.80, 0.10, 0.10],  # 1: class 0
        [0.70, 0.20, 0.10],  # 2: class 0, third most confident: over the cap
        [0.95, 0.03, 0.02],  # 3: class 0, the most confident
        [0.20, 0.55, 0.25],  # 4: class 1, below the threshold
        [0.10, 0.75, 0.15],  # 5: class 1
        [0.30, 0.30, 0.40],  # 6: class 2, below the threshold
    ])
    kept, labels = self_training.select_pseudo_labels(probabilities, per_class=2, threshold=0.6)
    assert kept.tolist() == [0, 3, 5] and labels.tolist() == [0, 0, 1]
    counts = np.bincount(labels, minlength=3)
    assert (counts <= 2).all()  # class balance: no class above its cap
    assert (probabilities.max(1).values[kept] >= 0.6).all()
    kept, labels = self_training.select_pseudo_labels(probabilities, per_class=None, threshold=0.0)
    assert kept.tolist() == list(range(7)) and labels.tolist() == [0, 0, 0, 0, 1, 1, 2]
    kept, _ = self_training.select_pseudo_labels(probabilities, per_class=1, threshold=0.0)
    assert kept.tolist() == [3, 5, 6]  # one per class: the most confident of each


def test_a_profile_caps_the_pool_and_the_students_epochs():
    recipe = RECIPES["self_training"]
    smoke = as_run(recipe, PROFILES["smoke"])
    assert smoke.self_training.pool_images == PROFILES["smoke"].pool_limit
    assert all(s.epochs <= PROFILES["smoke"].max_epochs for s in smoke.self_training.stages + smoke.stages)
    assert as_run(recipe, PROFILES["full"]) == recipe  # the full profile runs the recipe as written
    assert recipe.builds_on == "full" and recipe.chapter == "13-unlabelled"
    assert recipe.self_training.teacher_tta == "flip" and recipe.self_training.augment == "strong"


# -- identity: the recipes without self-training are as they were -------------------------------------------------


def test_recipes_without_self_training_keep_their_definition(tiny_dataset):
    for name, recipe in RECIPES.items():
        if recipe.self_training is None:
            assert "self_training" not in recipe.as_dict(), name
    definition = recipe_definition(current_recipe(make_config("full", "simple_cnn", data=str(tiny_dataset))))
    assert "self_training" not in definition
    found = committed_records()
    assert found
    for path, record in found:  # today's code gives every committed record the identity and name it has
        ident = record["identity"]
        assert "self_training" not in ident["recipe"], path
        config = RunConfig(**{**ident["config"], "data": ""})
        assert identity(config, ident["data"], ident["weights"]) == ident, path
        assert record_name(identity(config, ident["data"], ident["weights"])) == record["name"] == path.stem
        assert stale_reason(record) is None, path


# -- runs ----------------------------------------------------------------------------------------------------------


def _register(monkeypatch, name="st_test", **settings) -> str:
    teacher = Recipe("st_teacher", "test teacher", (Stage(epochs=2, lr=3e-3, schedule="cosine"),),
                     augment="crop_flip", batch_size=16)
    student = SelfTraining(stages=(Stage(epochs=2, lr=3e-3, schedule="cosine"),), **{
        "rounds": 2, "pool_images": None, "per_class": 6, "threshold": 0.0, "teacher_tta": "flip",
        "labelled_repeats": 2, **settings})
    monkeypatch.setitem(RECIPES, name, replace(teacher, name=name, builds_on="st_teacher", self_training=student))
    return name


def _config(data, recipe, seed=0):
    """fp32 on the CPU: where the same config gives the same numbers (the test below compares two runs)."""
    return make_config(recipe, "simple_cnn", per_class=5, val_per_class=5, seed=seed, profile="smoke", image_size=32,
                       data=str(data), precision="fp32", device="cpu")


def test_a_smoke_self_training_run_records_how_it_used_the_unlabelled_images(tiny_dataset, monkeypatch):
    name = _register(monkeypatch)
    record = run(_config(tiny_dataset, name), progress=False)
    section = record["self_training"]
    classes = record["data"]["classes"]
    assert section["pool"]["available"] == section["pool"]["used"] == 90 - 15 - 15  # 30 a class, 5 + 5 drawn
    assert section["pool"]["labels_given_to_training"] is False
    assert [r["round"] for r in section["rounds"]] == [1, 2]
    for r in section["rounds"]:
        assert r["pool_images"] == 60 and r["threshold"] == 0.0 and r["per_class_cap"] == 6
        assert sum(r["pseudo_labels_per_class"].values()) == r["pseudo_labels"] <= 6 * len(classes)
        assert all(count <= 6 for count in r["pseudo_labels_per_class"].values())
        assert r["student_train_images"] == 2 * 15 + r["pseudo_labels"]
        assert 0 <= r["student_val_accuracy"] <= 1
    assert 0 <= section["teacher_val_accuracy"] <= 1
    diagnostics = section["diagnostics"]
    assert "withheld labels" in diagnostics["note"] and "for the reader only" in diagnostics["note"]
    for r in diagnostics["rounds"]:
        assert 0 <= r["pseudo_label_accuracy"] <= 1 and set(r["pseudo_label_accuracy_per_class"]) == set(classes)
        assert r["accuracy_by_share_kept"][-1]["share"] == 1.0
        assert r["accuracy_by_share_kept"][-1]["accuracy"] == pytest.approx(r["teacher_pool_accuracy"])
    phases = [h["phase"] for h in record["history"]]
    assert phases == ["teacher"] * 2 + ["round 1"] * 2 + ["round 2"] * 2
    assert [h["epoch"] for h in record["history"]] == list(range(1, 7))
    assert record["identity"]["recipe"]["self_training"]["rounds"] == 2  # the settings decide the record
    assert record["recipe"]["self_training"]["stages"][0]["epochs"] == 2
    assert stale_reason(record) is None
    assert json.loads(json.dumps(record)) == record
    monkeypatch.setattr(runs_module, "train", lambda *a, **k: pytest.fail("trained again"))
    assert run(_config(tiny_dataset, name), progress=False)["name"] == record["name"]  # read back


def _without_diagnostics_and_clocks(record) -> dict:
    section = {k: v for k, v in record["self_training"].items() if k != "diagnostics"}
    section["rounds"] = [{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in section["rounds"]]
    return section


def test_pool_labels_never_reach_the_loop(tiny_dataset, monkeypatch):
    """The same run twice, the second with every pool image's label overwritten in the dataset itself: the
    training, the model and its test results are identical; only the reader-facing diagnostics differ."""
    name = _register(monkeypatch, rounds=1)
    config = _config(tiny_dataset, name)
    first = run(config, progress=False, device="cpu")

    dataset = runs_module._dataset(config.data, False)
    labels = dataset.train_labels
    subset = balanced_subset(labels, config.per_class, config.val_per_class, config.seed, dataset.classes)
    pool = np.setdiff1d(np.arange(len(labels)), np.concatenate(subset))
    original = labels[pool].copy()
    monkeypatch.setattr(runs_module, "balanced_subset", lambda *args, **kwargs: subset)  # the same labelled subset
    try:
        labels[pool] = (original + 1) % len(dataset.classes)  # every pool label wrong
        second = run(config, force=True, progress=False, device="cpu")
    finally:
        labels[pool] = original
    assert second["history"] == first["history"]
    assert second["metrics"] == first["metrics"]
    assert _without_diagnostics_and_clocks(second) == _without_diagnostics_and_clocks(first)
    before, after = (r["self_training"]["diagnostics"]["rounds"][0] for r in (first, second))
    assert before["pseudo_label_accuracy"] != after["pseudo_label_accuracy"]
    assert before != after


# -- the chapter ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_chapter_13_executes_in_the_smoke_profile(built_book):
    """Read from the session's smoke book (which executes every chapter once), not executed a second time."""
    out = built_book / "source" / "notebooks" / "13-unlabelled.ipynb"
    cells = json.loads(out.read_text())["cells"]
    outputs = [o for c in cells if c["cell_type"] == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o["output_type"] == "error"]
    text = "\n".join("".join(o.get("data", {}).get("text/markdown", "")) + "".join(o.get("text", ""))
                     for o in outputs)
    assert "not meaningful" in text and "unlabelled" in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 4  # its figures were drawn


def test_a_student_from_the_teacher_is_measured_from_the_imagenet_weights(tiny_dataset, monkeypatch):
    """`init="teacher"`: the student starts as a copy of the teacher, yet its distance from the pretrained
    weights is measured from a fresh model's, not from the teacher it was copied from."""
    import cifar_tl.training.self_training as self_training_module
    from cifar_tl.training.loop import weights_of

    measured_from = []
    real_train = self_training_module.train

    def spy(student, *args):
        start, own = args[-1], weights_of(student)
        measured_from.append(start is not None and any(
            not torch.equal(a, b) for name in own for a, b in zip(start[name], own[name])))
        return real_train(student, *args)

    monkeypatch.setattr(self_training_module, "train", spy)
    run(_config(tiny_dataset, _register(monkeypatch, init="teacher")), progress=False)
    assert measured_from == [True, True]  # both rounds: from the fresh weights, which differ from the teacher's
    measured_from.clear()
    run(_config(tiny_dataset, _register(monkeypatch, name="st_fresh")), progress=False)
    assert measured_from == [False, False]  # a fresh student is measured from its own (pretrained) weights
