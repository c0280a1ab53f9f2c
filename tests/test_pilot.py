"""The pilot profile chooses settings: one subset, judged on the validation split, and the test split is never
read (a run cannot reach it). Chapter 12's search is planned as pilots. CPU, fp32."""

from __future__ import annotations

import pytest

from cifar_tl import cli
from cifar_tl.records import campaign
from cifar_tl.records.identity import make_config
from cifar_tl.records.runner import run
from cifar_tl.training.profiles import get_profile
from cifar_tl.training.recipes import RECIPES, SEARCH
import cifar_tl.records.runner as runs_module


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CIFAR_TL_CACHE", str(tmp_path / "cache"))


def _config(data, recipe="finetune_naive", profile="pilot"):
    return make_config(recipe, "simple_cnn", per_class=5, val_per_class=5, seed=0, profile=profile, image_size=32,
                       epochs=1, precision="fp32", device="cpu", data=str(data))


class Poisoned:
    """Test images that fail the run the moment anything reads them."""

    def __getitem__(self, index):
        raise AssertionError("the test split was read")

    def __len__(self):
        raise AssertionError("the test split was read")


@pytest.fixture
def poisoned_test_split(monkeypatch):
    real = runs_module._dataset

    def dataset(source, progress):
        from dataclasses import replace

        return replace(real(source, progress), test_images=Poisoned(), test_labels=Poisoned())

    monkeypatch.setattr(runs_module, "_dataset", dataset)


@pytest.mark.parametrize("recipe", ["finetune_naive", "linear_probe", "full"])
def test_a_pilot_never_reads_the_test_split(tiny_dataset, poisoned_test_split, recipe):
    record = run(_config(tiny_dataset, recipe), progress=False, device="cpu")
    metrics = record["metrics"]
    assert metrics["test_read"] is False and metrics["test_accuracy"] is None and metrics["test_images"] == 0
    assert "test_predictions" not in metrics and "sklearn_probe" not in metrics
    assert record["data"]["counts"]["test"] == 0
    assert 0 <= metrics["val_accuracy"] <= 1
    assert campaign.whole(record)  # a pilot record may be committed as it is
    if recipe == "full":  # its test-time views are measured on validation only
        assert set(metrics["by_test_time_views"]["flip"]) == {"val_accuracy"}


def test_the_poison_is_real(tiny_dataset, poisoned_test_split):
    """The same run in a profile that reads the test split does reach the poisoned images."""
    with pytest.raises(AssertionError, match="the test split was read"):
        run(_config(tiny_dataset, profile="smoke"), progress=False, device="cpu")


def test_the_train_command_says_the_test_split_was_not_read(tiny_dataset, capsys):
    code = cli.main(["train", "--recipe", "finetune_naive", "--backbone", "simple_cnn", "--profile", "pilot",
                     "--per-class", "5", "--val-per-class", "5", "--image-size", "32", "--epochs", "1",
                     "--precision", "fp32", "--device", "cpu", "--data", str(tiny_dataset)])
    assert code in (0, None)
    assert "test split not read (pilot)" in capsys.readouterr().out


def test_chapter_12_plans_its_search_as_pilots_on_one_subset():
    pilots = [r for r in campaign.chapter_runs("12-full-recipe") if r.profile == "pilot"]
    assert {r.seed for r in pilots} == set(get_profile("pilot").seeds) == {0}
    assert {r.recipe for r in pilots if r.backbone == "efficientnet_lite0"} == {"full", *SEARCH}
    assert {(r.backbone, r.image_size) for r in pilots if r.backbone != "efficientnet_lite0"} == {
        ("efficientnet_lite1", 240), ("efficientnet_lite2", 260)}
    for name in SEARCH:  # each candidate is `full` with one setting changed, and not a rung of the ladder
        assert RECIPES[name].builds_on is None and RECIPES[name].description.startswith("full with ")


def test_a_smoke_build_searches_the_default_backbones_candidates_on_its_first_subset():
    smoke = campaign.search_runs("smoke")
    assert {(r.profile, r.seed, r.backbone, r.image_size) for r in smoke} == {("smoke", 0, "efficientnet_lite0", None)}
    assert [r.recipe for r in smoke] == ["full", *SEARCH]
    assert campaign.search_runs("pilot") == [r for r in campaign.chapter_runs("12-full-recipe") if r.profile == "pilot"]


def test_the_search_table_gives_each_candidates_gap_to_full_on_validation():
    from cifar_tl.book.tables import search_table

    def record(val, seconds, size=224):
        return {"config": {"image_size": size, "seed": 0}, "timing": {"total_seconds": seconds},
                "metrics": {"val_accuracy": val, "test_read": False}}

    found = {campaign.PlannedRun("full", "efficientnet_lite0", 0, "pilot"): record(0.80, 600),
             campaign.PlannedRun(SEARCH[0], "efficientnet_lite0", 0, "pilot"): record(0.825, 1200),
             campaign.PlannedRun("full", "efficientnet_lite1", 0, "pilot", 240): record(0.79, 900, 240)}
    table = search_table(found)
    assert list(table["Δ vs full (pp)"]) == ["–", "+2.5", "-1.0"]
    assert list(table["input (px)"]) == [224, 224, 240]
    assert list(table["minutes"]) == ["10.0", "20.0", "15.0"]
    assert set(table["test read"]) == {"no"}
    assert table.loc[f"{SEARCH[0]} on efficientnet_lite0", "change"] == "twice the fine-tuning epochs (30)"
    assert RECIPES[SEARCH[0]].description.startswith("full with twice the fine-tuning epochs (30)")
