"""A record's name is a hash of its identity (README, *Reference results* and *Reproducibility*): every change
that decides a result gives a new name, and a change that does not (the code version, the data's path, a
recipe's prose, the device that runs the same precision) keeps it. One table, one row per change."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cifar_tl.records.identity import make_config
from cifar_tl.records.runner import run
from cifar_tl.records.store import record_path
from cifar_tl.training.recipes import RECIPES
import cifar_tl.records.identity as identity_module
import cifar_tl.records.runner as runs_module

DATA_CHECKSUM = "sha256:" + "ab" * 32
WEIGHTS_SHA256 = "cd" * 32
BASE = dict(recipe="linear_probe", backbone="simple_cnn", per_class=5, val_per_class=5, seed=0, profile="smoke",
            image_size=32, epochs=2, precision="fp32", device="cpu")


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CIFAR_TL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CIFAR_TL_RENDER_ONLY", raising=False)


def _recipe_changed(monkeypatch, **fields):
    monkeypatch.setitem(RECIPES, "linear_probe", replace(RECIPES["linear_probe"], **fields))


# (what changes, how: (monkeypatch, data folder) -> (config overrides, data checksum, weights checksum, data path),
#  whether the record gets a new name)
CHANGES = [
    ("nothing", lambda mp, d: ({}, DATA_CHECKSUM, WEIGHTS_SHA256, d), False),
    # the run config
    ("recipe", lambda mp, d: ({"recipe": "finetune_naive"}, DATA_CHECKSUM, WEIGHTS_SHA256, d), True),
    ("backbone", lambda mp, d: ({"backbone": "efficientnet_lite0"}, DATA_CHECKSUM, WEIGHTS_SHA256, d), True),
    ("subset seed", lambda mp, d: ({"seed": 1}, DATA_CHECKSUM, WEIGHTS_SHA256, d), True),
    ("profile", lambda mp, d: ({"profile": "full"}, DATA_CHECKSUM, WEIGHTS_SHA256, d), True),
    ("input size", lambda mp, d: ({"image_size": 48}, DATA_CHECKSUM, WEIGHTS_SHA256, d), True),
    ("epochs", lambda mp, d: ({"epochs": 1}, DATA_CHECKSUM, WEIGHTS_SHA256, d), True),
    ("test cap", lambda mp, d: ({"test_limit": 6}, DATA_CHECKSUM, WEIGHTS_SHA256, d), True),
    ("no test cap", lambda mp, d: ({"test_limit": None}, DATA_CHECKSUM, WEIGHTS_SHA256, d), True),
    ("images per class", lambda mp, d: ({"per_class": 6}, DATA_CHECKSUM, WEIGHTS_SHA256, d), True),
    ("validation images per class", lambda mp, d: ({"val_per_class": 4}, DATA_CHECKSUM, WEIGHTS_SHA256, d), True),
    ("precision", lambda mp, d: ({"precision": "bf16"}, DATA_CHECKSUM, WEIGHTS_SHA256, d), True),
    # what the run reads
    ("the data's content", lambda mp, d: ({}, "sha256:" + "ef" * 32, WEIGHTS_SHA256, d), True),
    ("the weights (same file name, other content)", lambda mp, d: ({}, DATA_CHECKSUM, "01" * 32, d), True),
    # the recipe's definition and the code's result revision
    ("a recipe setting", lambda mp, d: (_recipe_changed(mp, weight_decay=0.123) or {}, DATA_CHECKSUM,
                                        WEIGHTS_SHA256, d), True),
    ("a stage of the recipe", lambda mp, d: (_recipe_changed(mp, stages=tuple(
        replace(s, lr=s.lr * 2) for s in RECIPES["linear_probe"].stages)) or {}, DATA_CHECKSUM, WEIGHTS_SHA256, d),
     True),
    ("RESULT_REVISION", lambda mp, d: (mp.setattr(identity_module, "RESULT_REVISION", identity_module.RESULT_REVISION + 1)
                                       or {}, DATA_CHECKSUM, WEIGHTS_SHA256, d), True),
    # what does not decide the result
    ("the code version only", lambda mp, d: (mp.setattr(runs_module, "code_version", lambda: "9.9.9+edited") or {},
                                             DATA_CHECKSUM, WEIGHTS_SHA256, d), False),
    ("the data's path only", lambda mp, d: ({}, DATA_CHECKSUM, WEIGHTS_SHA256, d.parent / "elsewhere" / d.name), False),
    ("the recipe's description", lambda mp, d: (_recipe_changed(mp, description="said otherwise") or {},
                                                DATA_CHECKSUM, WEIGHTS_SHA256, d), False),
    ("the device, same precision", lambda mp, d: ({"device": None}, DATA_CHECKSUM, WEIGHTS_SHA256, d), False),
]


@pytest.mark.parametrize("change, how, new_name", CHANGES, ids=[c[0] for c in CHANGES])
def test_what_changes_a_records_name(tmp_path, monkeypatch, change, how, new_name):
    data = tmp_path / "data"
    base = record_path(make_config(data=str(data), **BASE), DATA_CHECKSUM, WEIGHTS_SHA256)
    overrides, checksum, weights, path = how(monkeypatch, data)
    changed = record_path(make_config(data=str(path), **{**BASE, **overrides}), checksum, weights)
    assert (changed != base) is new_name, f"{change}: {base.name} -> {changed.name}"
    assert changed.name.startswith(f"{overrides.get('recipe', 'linear_probe')}-{overrides.get('backbone', 'simple_cnn')}"
                                   f"-s{overrides.get('seed', 0)}-")


def test_a_code_only_change_reads_the_record_back_and_a_new_revision_trains_again(tiny_dataset, monkeypatch):
    """End to end on a real run: after an edit that keeps results (the code version changes) the record is
    read back; after RESULT_REVISION is bumped it is not: a new record is trained beside it."""
    trained = []
    real_train = runs_module.train
    monkeypatch.setattr(runs_module, "train", lambda *a, **k: trained.append(1) or real_train(*a, **k))
    config = make_config(data=str(tiny_dataset), **BASE)
    first = run(config, progress=False, device="cpu")
    assert trained == [1] and first["code_version"] == runs_module.code_version()
    monkeypatch.setattr(runs_module, "code_version", lambda: "9.9.9+edited")
    assert run(config, progress=False, device="cpu") == first and trained == [1]
    monkeypatch.setattr(identity_module, "RESULT_REVISION", identity_module.RESULT_REVISION + 1)
    second = run(config, progress=False, device="cpu")
    assert trained == [1, 1] and second["name"] != first["name"]
    assert second["code_version"] == "9.9.9+edited" and second["identity"]["revision"] == first["identity"]["revision"] + 1
