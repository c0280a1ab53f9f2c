"""The technique chapters' helpers in cifar_tl.report: decisions on validation, the ladder, recipe
differences, learning rates, BatchNorm statistics and reference records. No training: records are
built by hand, models are tiny."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cifar_tl import report
from cifar_tl.backbones import create_model
from cifar_tl.recipes import RECIPES


def record(recipe: str, seed: int, val: float, test: float, **extra) -> dict:
    return {"config": {"recipe": recipe, "seed": seed, "backbone": "efficientnet_lite0", "profile": "full",
                       "image_size": 224},
            "metrics": {"val_accuracy": val, "test_accuracy": test, "test_images": 10000}, **extra}


def test_decision_keeps_a_change_that_raises_mean_validation_accuracy_paired_by_seed():
    base = [record("a", 0, 0.50, 0.50), record("a", 1, 0.60, 0.60)]
    new = [record("b", 1, 0.61, 0.40), record("b", 0, 0.53, 0.40)]  # another order: paired by seed, not position
    d = report.decision(base, new)
    assert d["deltas"] == pytest.approx({1: 0.01, 0: 0.03})
    assert d["mean_delta"] == pytest.approx(0.02)
    assert d["supported"] and d["n"] == 2 and d["rose_in"] == 2
    assert d["verdict"] == ("kept: validation accuracy rose by 2.0 points on average over 2 subsets, rising in 2 of "
                            "them (+1.0, +3.0 points)")


def test_decision_ignores_test_accuracy_and_says_when_validation_does_not_support_a_kept_step():
    base = [record("a", 0, 0.50, 0.10), record("a", 1, 0.60, 0.10)]
    new = [record("b", 0, 0.49, 0.90), record("b", 1, 0.58, 0.90)]  # test soars, validation falls
    d = report.decision(base, new)
    assert not d["supported"]
    assert d["mean_delta_points"] == "-1.5"
    assert d["verdict"].startswith("not supported in this build: validation accuracy fell by 1.5 points on average "
                                   "over 2 subsets, rising in 0 of them (-1.0, -2.0 points)")
    assert "keeps the step anyway, pending the full-profile reference runs" in d["verdict"]


def test_decision_words_side_steps_and_ties():
    base = [record("a", 0, 0.5, 0.5)]
    assert report.decision(base, [record("b", 0, 0.6, 0.5)], in_ladder=False)["verdict"].startswith(
        "supported in this build but not taken")
    tie = report.decision(base, [record("b", 0, 0.5, 0.9)], in_ladder=False)
    assert not tie["supported"]
    assert tie["verdict"].startswith("not kept: validation accuracy did not change on average over 1 subset, rising in 0")
    assert tie["verdict"].endswith("the ladder continues from a")
    assert "`" not in tie["verdict"]  # plain text: glue:text shows Markdown marks as they are


def test_decision_needs_a_shared_subset():
    with pytest.raises(ValueError, match="share no subset"):
        report.decision([record("a", 0, 0.5, 0.5)], [record("b", 1, 0.5, 0.5)])


def test_ladder_follows_the_recipes_from_naive_to_full():
    line = report.ladder()
    assert line[0] == "finetune_naive" and line[-1] == "full"
    assert "ft_gradual" not in line  # a side step
    assert line.index("ft_lpft") < line.index("ft_bn_frozen") < line.index("ft_crop_flip")
    for new, base in report.LADDER_BASES.items():
        assert new in RECIPES and base in RECIPES
        changed = report.recipe_diff(base, new)
        assert len(changed) > 0, f"{new} does not change {base}"
        if len(RECIPES[new].stages) == len(RECIPES[base].stages):
            assert len(changed) <= 2, f"{new} changes more than one thing of {base}:\n{changed}"


def test_recipe_diff_lists_only_what_changed():
    diff = report.recipe_diff("ft_bn_frozen", "ft_crop_flip")
    assert list(diff.index) == ["augment"]
    assert diff.loc["augment"].tolist() == ["none", "crop_flip"]
    two = report.recipe_diff("ft_discriminative", "ft_lpft")
    assert two.loc["stages"].tolist() == ["1", "2"]
    assert two.loc["stage 2", "ft_discriminative"] == "–"
    assert "trains every group" in two.loc["stage 2", "ft_lpft"]
    assert not any(key.startswith("stage 2 ·") for key in two.index)  # a new stage shows in one line


def test_ladder_table_pairs_each_rung_with_the_one_before_and_the_first():
    runs = {
        "a": [record("a", 0, 0.50, 0.40), record("a", 1, 0.52, 0.42)],
        "b": [record("b", 0, 0.55, 0.50), record("b", 1, 0.55, 0.50)],
        "c": [record("c", 0, 0.60, 0.45), record("c", 1, 0.60, 0.47)],
    }
    table = report.ladder_table(runs)
    assert list(table.index) == ["a", "b", "c"]
    assert table.loc["b", "Δ test vs previous (pp)"] == "+9.0"
    assert table.loc["c", "Δ test vs previous (pp)"] == "-4.0"
    assert table.loc["c", "Δ test vs a (pp)"] == "+5.0"
    assert table.loc["c", "Δ validation vs previous (pp)"] == "+5.0"
    assert table.loc["a", "Δ test vs previous (pp)"] == "–"
    assert table.loc["b", "test accuracy"] == "50.0 ± 0.0% (n=2)"
    other = report.ladder_table(runs, bases={"c": "a"})
    assert other.loc["c", "compared with"] == "a" and other.loc["c", "Δ test vs previous (pp)"] == "+5.0"


def test_learning_rates_follow_warm_up_cosine_and_the_per_group_decay():
    groups = ["stem", "mid", "top", "head"]
    rates = report.learning_rates("ft_discriminative", groups, train_images=1000, max_epochs=2)
    steps = 1000 // RECIPES["ft_discriminative"].batch_size
    assert len(rates) == 2 * steps and rates.index[0] == 0 and rates.index[steps] == 1
    peak = rates[groups].max()
    assert peak["head"] == pytest.approx(RECIPES["ft_discriminative"].stages[0].lr)
    assert peak["top"] / peak["head"] == pytest.approx(0.7) and peak["stem"] / peak["head"] == pytest.approx(0.7**3)
    head = rates["head"].to_numpy()
    assert head[0] < head[steps - 1]  # warming up over the first epoch
    assert head[-1] == pytest.approx(0.0, abs=1e-12)  # the cosine ends at zero


def test_learning_rates_leave_frozen_groups_empty_and_count_epochs_over_stages():
    groups = ["stem", "a", "b", "c", "d", "head"]
    rates = report.learning_rates("ft_gradual", groups, train_images=640)
    first = rates[rates["stage"] == 1]
    assert first[["stem", "a", "b", "c", "d"]].isna().all().all() and first["head"].notna().all()
    second = rates[rates["stage"] == 2]
    assert second[["stem", "a"]].isna().all().all() and second[["b", "c", "d", "head"]].notna().all().all()
    assert rates.index[-1] == pytest.approx(sum(s.epochs for s in RECIPES["ft_gradual"].stages) - 0.1)


def test_batchnorm_summary_separates_learned_scales_from_measured_statistics():
    model = create_model("simple_cnn", 3, pretrained=False)
    summary = report.batchnorm_summary(model)
    assert list(summary.index) == model.group_names()
    assert summary.loc["block1", "BatchNorm layers"] == 2
    assert summary.loc["block1", "learnable (γ, β)"] == 2 * (32 + 32)
    assert summary.loc["block1", "running statistics (μ, σ²)"] == 2 * (32 + 32)
    assert summary.loc["head", "BatchNorm layers"] == 0
    assert summary["all parameters"].sum() == sum(p.numel() for p in model.parameters())


def test_batchnorm_shift_is_zero_when_the_stored_statistics_are_the_batch_own():
    torch.manual_seed(0)
    model = create_model("simple_cnn", 3, pretrained=False)
    images = np.random.default_rng(0).integers(0, 256, size=(16, 32, 32, 3), dtype=np.uint8)
    fresh = report.batchnorm_shift(model, images, 32)
    assert len(fresh) == 6  # fresh layers store μ=0, σ²=1, far from what this batch gives them
    assert abs(fresh["variance ratio (median)"].iloc[0] - 1) > 0.1
    # One training-mode pass with a cumulative average stores exactly this batch's statistics.
    from cifar_tl.augment import prepare
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(prepare(torch.as_tensor(images), 32, model.mean, model.std))
    own = report.batchnorm_shift(model, images, 32)
    assert own["mean shift (stored σ)"].max() < 1e-3
    assert own["variance ratio (median)"].to_numpy() == pytest.approx(1.0, abs=0.01)
    assert model.training  # the mode it was in is restored


def test_read_records_skips_what_is_not_a_record(tmp_path):
    assert report.read_records(tmp_path / "missing") == ([], [])
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "full-s0.json").write_text(json.dumps(record("full", 0, 0.9, 0.88)))
    (tmp_path / "notes.json").write_text("[1, 2]")
    (tmp_path / "broken.json").write_text("{")
    records, skipped = report.read_records(tmp_path)
    assert [r["config"]["recipe"] for r in records] == ["full"]
    assert sorted(skipped) == ["broken.json", "notes.json"]


def test_committed_reference_records_are_whole_full_profile_runs():
    """What results/ holds is what chapter 12 and the README call reference runs."""
    records, skipped = report.read_records(Path(__file__).resolve().parents[1] / "results")
    assert skipped == []
    for r in records:
        name = f"{r['config']['recipe']} seed {r['config']['seed']}"
        assert r["config"]["profile"] == "full" and r["config"]["image_size"] == 224, name
        assert r["config"]["test_limit"] is None and r["metrics"]["test_images"] == r["data"]["test_total"], name
        assert r["machine"]["cpu"] and r["code_version"] and r["data"]["name"], name
        assert len(r["metrics"]["test_predictions"]) == r["metrics"]["test_images"], name


def test_reference_table_groups_seeds_and_sets_this_build_beside_them():
    gpu = {"machine": {"gpu": "NVIDIA H100", "cpu": "x86"}}
    refs = [record("full", 0, 0.90, 0.88, **gpu), record("full", 1, 0.91, 0.90, **gpu),
            record("linear_probe", 0, 0.7, 0.7, machine={"gpu": None, "cpu": "Some CPU"})]
    own = {"full": [record("full", 0, 0.3, 0.2), record("full", 1, 0.3, 0.4)]}
    table = report.reference_table(refs, own).set_index("recipe")
    assert table.loc["full", "test accuracy"] == "89.0 ± 1.4% (n=2)"
    assert table.loc["full", "machine"] == "NVIDIA H100" and table.loc["linear_probe", "machine"] == "Some CPU"
    assert table.loc["full", "test images"] == "10,000" and table.loc["full", "input"] == "224×224"
    assert table.loc["full", "data"] == "?"  # these hand-made records name no data
    assert table.loc["full", "this build's test accuracy"] == "30.0 ± 14.1% (n=2)"
    assert table.loc["linear_probe", "this build's test accuracy"] == "–"
    assert report.reference_table([]).empty


def test_the_smoke_profile_caps_each_stage_of_the_learning_rates():
    rates = report.learning_rates("ft_lpft", ["stem", "head"], train_images=1000, max_epochs=2)
    assert sorted(set(rates["stage"])) == [1, 2]
    assert math.isclose(rates.index[-1], 4 - 1 / 15)


def test_profile_caveat_says_when_a_verdict_means_nothing():
    assert "smoke profile" in report.profile_caveat("smoke") and "full profile" in report.profile_caveat("smoke")
    assert "`" not in report.profile_caveat("smoke")
    assert "3 subsets" in report.profile_caveat("full")
