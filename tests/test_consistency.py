"""Consistency training (FixMatch) on the unlabelled pool: the recipe and its checks, labels that never reach the
loop, a smoke run of `fixmatch` and its record, a threshold that keeps nothing, and resuming an interrupted run.
Everything runs on the CPU in fp32 (where the same config gives the same numbers), with the small CNN."""

from __future__ import annotations

import copy
import inspect
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from faults import comparable_record, interrupt_after_saves

from cifar_tl.core.errors import UserError
from cifar_tl.core.files import cache_dir
from cifar_tl.data.subsets import balanced_subset
from cifar_tl.models.backbones import create_model
from cifar_tl.records.identity import make_config, stale_reason
from cifar_tl.records.runner import run
from cifar_tl.training import consistency
from cifar_tl.training.profiles import PROFILES, as_run
from cifar_tl.training.recipes import RECIPES, Consistency, Recipe, SelfTraining, Stage
import cifar_tl.records.runner as runs_module


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CIFAR_TL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CIFAR_TL_RENDER_ONLY", raising=False)


def _config(data, recipe, seed=0):
    return make_config(recipe, "simple_cnn", per_class=5, val_per_class=5, seed=seed, profile="smoke", image_size=32,
                       data=str(data), precision="fp32", device="cpu")


def _register(monkeypatch, name="ct_test", **settings) -> str:
    """A small recipe: one labelled stage, then one consistency stage (every pseudo-label kept by default)."""
    stage = Stage(epochs=2, lr=3e-3, schedule="cosine")
    chosen = {"stages": (stage,), "unlabelled_ratio": 2, "threshold": 0.0, **settings}
    recipe = Recipe(name, "test", (stage,), augment="crop_flip", batch_size=16, consistency=Consistency(**chosen))
    monkeypatch.setitem(RECIPES, name, recipe)
    return name


# -- the recipe ------------------------------------------------------------------------------------------------


def test_the_fixmatch_recipe_and_what_a_profile_makes_of_it():
    recipe, full = RECIPES["fixmatch"], RECIPES["full"]
    assert recipe.builds_on == "full" and recipe.chapter == "13-unlabelled" and recipe.self_training is None
    assert recipe.stages == full.stages  # the labels-only part is full's; only the consistency training is new
    assert recipe.consistency.stages[0].lr == full.stages[-1].lr and recipe.consistency.stages[0].schedule == "cosine"
    assert recipe.consistency.pool_images is None and recipe.consistency.threshold == 0.95
    smoke = as_run(recipe, PROFILES["smoke"])
    assert smoke.consistency.pool_images == PROFILES["smoke"].pool_limit
    assert all(s.epochs <= PROFILES["smoke"].max_epochs for s in smoke.consistency.stages + smoke.stages)
    assert recipe.consistency.unlabelled_ratio == 7 and smoke.consistency.unlabelled_ratio == 1  # compute, scaled
    assert as_run(recipe, PROFILES["pilot"]).consistency.unlabelled_ratio == 7
    assert as_run(recipe, PROFILES["full"]) == recipe  # the full profile runs the recipe as written
    assert recipe.as_dict()["consistency"]["stages"][0]["epochs"] == 10
    for name, other in RECIPES.items():
        if other.consistency is None:
            assert "consistency" not in other.as_dict(), name  # their identities are as they were


def test_a_recipe_uses_the_pool_one_way_and_bad_settings_are_refused():
    stage = Stage(epochs=1, lr=1e-3)
    with pytest.raises(ValueError, match="not both"):
        Recipe("both", "test", (stage,), self_training=SelfTraining(stages=(stage,)),
               consistency=Consistency(stages=(stage,)))
    for bad in ({"stages": ()}, {"threshold": 1.5}, {"unlabelled_ratio": 0}, {"pool_images": 0}, {"weight": -1.0},
                {"strong": "rotate"}):
        with pytest.raises(ValueError):
            Consistency(**{"stages": (stage,), **bad})


# -- labels that never reach the loop --------------------------------------------------------------------------


def test_the_loop_is_handed_the_pools_images_and_only_the_subsets_labels(tiny_dataset, monkeypatch):
    """What a run really passes to the consistency loop (spied on): the pool is every training image outside the
    labelled and validation subsets, as images; the only labels handed over are those of the two subsets."""
    name = _register(monkeypatch)
    handed = {}
    real = consistency.consistency_train

    def spy(*args, **kwargs):
        handed.update(inspect.signature(real).bind(*args, **kwargs).arguments)
        return real(*args, **kwargs)

    monkeypatch.setattr(consistency, "consistency_train", spy)
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


def test_pool_labels_never_reach_the_loop(tiny_dataset, monkeypatch):
    """The same run twice, the second with every pool image's label overwritten in the dataset itself: the
    training, the model and its test results are identical; only the reader-facing diagnostics differ."""
    name = _register(monkeypatch)
    config = _config(tiny_dataset, name)
    first = run(config, progress=False, device="cpu")
    dataset = runs_module._dataset(config.data, False)
    labels = dataset.train_labels
    subset = balanced_subset(labels, config.per_class, config.val_per_class, config.seed, dataset.classes)
    pool = np.setdiff1d(np.arange(len(labels)), np.concatenate(subset))
    original = labels[pool].copy()
    monkeypatch.setattr(runs_module, "balanced_subset", lambda *args, **kwargs: subset)
    try:
        labels[pool] = (original + 1) % len(dataset.classes)  # every pool label wrong
        second = run(config, force=True, progress=False, device="cpu")
    finally:
        labels[pool] = original
    assert second["history"] == first["history"] and second["metrics"] == first["metrics"]
    without = [{k: v for k, v in r["consistency"].items() if k != "diagnostics"} for r in (first, second)]
    assert without[0] == without[1]
    before, after = (r["consistency"]["diagnostics"]["last_epoch"] for r in (first, second))
    assert before["pseudo_labels"] == after["pseudo_labels"] > 0  # threshold 0: every drawn image is kept
    assert before["pseudo_label_accuracy"] != after["pseudo_label_accuracy"]


# -- runs ------------------------------------------------------------------------------------------------------


def test_a_smoke_fixmatch_run_records_how_it_used_the_unlabelled_images(tiny_dataset, monkeypatch):
    record = run(_config(tiny_dataset, "fixmatch"), progress=False, device="cpu")
    section = record["consistency"]
    assert section["pool"]["available"] == section["pool"]["used"] == 90 - 15 - 15
    assert section["pool"]["labels_given_to_training"] is False
    assert section["settings"] == {"pool_images": 500, "unlabelled_ratio": 1, "threshold": 0.95, "weight": 1.0,
                                   "weak": "crop_flip", "strong": "strong"}
    phases = [h["phase"] for h in record["history"]]
    assert phases == ["labelled"] * 4 + ["consistency"] * 2  # full's two stages, then the consistency stage
    assert [h["epoch"] for h in record["history"]] == list(range(1, 7))
    assert [h["stage"] for h in record["history"]][-2:] == [3, 3]
    labelled_keys = set(record["history"][0])
    for entry in record["history"][-2:]:
        assert set(entry) == labelled_keys | {"mask_rate", "unlabelled_loss"}
        assert 0 <= entry["mask_rate"] <= 1 and entry["unlabelled_loss"] >= 0
    assert [e["mask_rate"] for e in section["epochs"]] == [h["mask_rate"] for h in record["history"][-2:]]
    assert [e["epoch"] for e in section["epochs"]] == [5, 6]
    diagnostics = section["diagnostics"]
    assert "withheld labels" in diagnostics["note"] and "for the reader only" in diagnostics["note"]
    last = diagnostics["last_epoch"]
    assert last["epoch"] == 6 and last["pool_images_drawn"] == 1 * 15  # one step of 15 labelled images an epoch
    assert last["pseudo_labels"] == round(record["history"][-1]["mask_rate"] * last["pool_images_drawn"])
    assert last["pseudo_label_accuracy"] is None or 0 <= last["pseudo_label_accuracy"] <= 1
    assert record["identity"]["recipe"]["consistency"]["threshold"] == 0.95  # the settings decide the record
    from cifar_tl.book import pseudo_label_views as report

    table = report.consistency_table([record])  # chapter 13's reading of it
    assert table.loc[0, "pool images"] == 60 and table.loc[0, "epochs"] == 2
    assert table.loc[0, "mask rate, last epoch"] == f"{100 * section['epochs'][-1]['mask_rate']:.1f}%"
    assert table.loc[0, "pseudo-labels, last epoch"] == last["pseudo_labels"]
    with pytest.raises(ValueError, match="not a consistency-training run"):
        report.consistency_table([{**record, "consistency": None}])
    assert stale_reason(record) is None
    assert json.loads(json.dumps(record)) == record
    monkeypatch.setattr(runs_module, "train", lambda *a, **k: pytest.fail("trained again"))
    assert run(_config(tiny_dataset, "fixmatch"), progress=False, device="cpu")["name"] == record["name"]


def test_a_threshold_of_one_keeps_no_pseudo_label_and_the_labelled_part_alone_trains():
    """With frozen BatchNorm statistics the pool images then change nothing: two very different pools give
    the same training, step for step, and it still moves the weights."""
    stage = Stage(epochs=2, lr=3e-3, schedule="cosine", trainable_bn="eval")
    recipe = Recipe("ct_none", "test", (stage,), augment="crop_flip", batch_size=8,
                    consistency=Consistency(stages=(stage,), unlabelled_ratio=2, threshold=1.0))
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8))
    y = torch.arange(16) % 3
    pools = [torch.from_numpy(rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)),
             torch.zeros(20, 32, 32, 3, dtype=torch.uint8)]
    torch.manual_seed(0)
    start = create_model("simple_cnn", 3, pretrained=False)
    results = []
    for pool in pools:
        torch.manual_seed(1)  # the same dropout masks for both
        model = copy.deepcopy(start)
        results.append((consistency.consistency_train(model, recipe, x, y, x[:6], y[:6], pool, 32,
                                                      torch.device("cpu"), 0, progress=False), model))
    (first, model), (second, other) = results
    assert [h["mask_rate"] for h in first.history] == [0.0, 0.0]
    assert [h["unlabelled_loss"] for h in first.history] == [0.0, 0.0]
    assert first.last_epoch["confidence"].numel() == 2 * 2 * 8  # two steps of 2 x 8 pool images in the last epoch
    assert first.history == second.history
    for a, b in zip(model.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)
    assert first.distance_from_pretrained["head"] > 0 and first.images_trained == 2 * (16 + 2 * 16 * 2)


# -- resuming --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stop_after, resumed_at", [
    (6, [5]),  # full's 4 epochs and its finished state, then the first consistency epoch: resumes inside it
    (8, []),  # consistency training finished, record not written: its final state gives everything back
])
def test_an_interrupted_fixmatch_run_resumes_to_the_same_record(tiny_dataset, tmp_path, monkeypatch, stop_after,
                                                                resumed_at):
    config = _config(tiny_dataset, "fixmatch")
    monkeypatch.setenv("CIFAR_TL_CACHE", str(tmp_path / "uninterrupted"))
    expected = run(config, progress=False, device="cpu")
    monkeypatch.setenv("CIFAR_TL_CACHE", str(tmp_path / "interrupted"))
    with monkeypatch.context() as patch:
        interrupt_after_saves(patch, stop_after)
        with pytest.raises(KeyboardInterrupt):
            run(config, progress=False, device="cpu")
    assert {p.name for p in cache_dir("runs").glob("*.state/*.pt")} == {"train.pt", "consistency.pt"}
    resumed = run(config, progress=False, device="cpu")
    assert comparable_record(resumed) == comparable_record(expected)
    assert resumed["timing"]["resumed_at_epochs"] == resumed_at
    assert not list(cache_dir("runs").glob("*.state")), "the training state outlived its record"


def test_the_consistency_loop_needs_a_pool():
    stage = Stage(epochs=1, lr=1e-3)
    recipe = Recipe("ct_empty", "test", (stage,), consistency=Consistency(stages=(stage,)))
    x = torch.zeros(4, 32, 32, 3, dtype=torch.uint8)
    model = create_model("simple_cnn", 2, pretrained=False)
    with pytest.raises(Exception, match="pool is empty"):
        consistency.consistency_train(model, recipe, x, torch.tensor([0, 1, 0, 1]), x, torch.tensor([0, 1, 0, 1]),
                                      x[:0], 32, torch.device("cpu"), 0, progress=False)


def test_a_changed_copy_of_the_recipe_is_checked_too():
    """`dataclasses.replace` of a consistency recipe (as the chapters' variants do) keeps the check."""
    recipe = RECIPES["fixmatch"]
    assert replace(recipe, name="other").consistency == recipe.consistency
    with pytest.raises(ValueError, match="not both"):
        replace(recipe, self_training=SelfTraining(stages=recipe.stages))


@pytest.mark.parametrize("recipe", ["fixmatch", "self_training"])
def test_a_recipe_that_needs_unlabelled_images_says_so_before_training(tiny_dataset, monkeypatch, recipe):
    config = make_config(recipe, "simple_cnn", per_class=15, val_per_class=15, seed=0, profile="smoke",
                         image_size=32, data=str(tiny_dataset), precision="fp32", device="cpu")
    monkeypatch.setattr(runs_module, "train", lambda *a, **k: pytest.fail("trained before saying the pool is empty"))
    with pytest.raises(UserError, match="there are none left.*smaller --per-class or --val-per-class"):
        run(config, progress=False, device="cpu")
