"""cifar_tl.book.ladder: the ladder of recipes, and decisions made on validation accuracy only (paired by
subset). Records are built by hand."""

from __future__ import annotations

import pytest

from cifar_tl.book import ladder, recipe_cards
from cifar_tl.training.recipes import RECIPES


def record(recipe: str, seed: int, val: float, test: float, **extra) -> dict:
    return {"config": {"recipe": recipe, "seed": seed, "backbone": "efficientnet_lite0", "profile": "full",
                       "image_size": 224},
            "metrics": {"val_accuracy": val, "test_accuracy": test, "test_images": 10000}, **extra}


def _three(recipe: str, vals, tests=(0.5, 0.5, 0.5)) -> list[dict]:
    return [record(recipe, seed, val, test) for seed, (val, test) in enumerate(zip(vals, tests))]


def test_a_change_counts_as_better_when_every_subset_agrees_and_the_mean_clears_two_standard_errors():
    base = _three("a", (0.50, 0.60, 0.70))
    new = [record("b", 2, 0.73, 0.4), record("b", 0, 0.51, 0.4), record("b", 1, 0.62, 0.4)]  # paired by seed
    d = ladder.decision(base, new)
    assert d["deltas"] == pytest.approx({2: 0.03, 0: 0.01, 1: 0.02})
    assert d["mean_delta"] == pytest.approx(0.02) and d["se"] == pytest.approx(0.01 / 3 ** 0.5)
    half = 4.302653 * 0.01 / 3 ** 0.5  # Student's t at 97.5% with 2 degrees of freedom
    assert d["interval"] == pytest.approx((0.02 - half, 0.02 + half), abs=1e-6)
    assert d["interval_points"] == "-0.5 to +4.5"
    assert d["outcome"] == "better" and d["supported"] and d["n"] == 3 and d["rose_in"] == 3
    assert d["verdict"] == ("better, kept: validation accuracy rose by 2.0 points on average over 3 subsets, rising in "
                            "3 of them (+3.0, +1.0, +2.0 points; 95% interval of the mean -0.5 to +4.5 points)")
    assert "standard error" in d["rule"] and "every subset" in d["rule"]


@pytest.mark.parametrize("vals, outcome", [
    ((0.51, 0.59, 0.72), "no clear difference"),  # +1, -1, +2: the subsets disagree
    ((0.501, 0.61, 0.75), "no clear difference"),  # all rise, but +0.1, +1, +5 points: the mean is within 2 SE
    ((0.48, 0.57, 0.69), "worse"),  # -2, -3, -1
])
def test_a_change_is_not_better_when_the_subsets_disagree_or_the_gain_is_within_the_noise(vals, outcome):
    d = ladder.decision(_three("a", (0.50, 0.60, 0.70)), _three("b", vals))
    assert d["outcome"] == outcome and not d["supported"]
    assert d["verdict"].split(":")[0] == f"{outcome}, kept all the same"
    assert "the ladder in the code takes the step anyway (it is measured, not selected)" in d["verdict"]


def test_the_decision_ignores_test_accuracy():
    base = _three("a", (0.50, 0.60, 0.70), tests=(0.1, 0.1, 0.1))
    new = _three("b", (0.48, 0.57, 0.69), tests=(0.9, 0.9, 0.9))  # test soars, validation falls
    d = ladder.decision(base, new)
    assert d["outcome"] == "worse" and d["mean_delta_points"] == "-2.0"


def test_decision_words_side_steps_and_a_single_subset():
    base = _three("a", (0.50, 0.60, 0.70))
    better = ladder.decision(base, _three("b", (0.53, 0.62, 0.71)), in_ladder=False)
    assert better["verdict"].startswith("better, but not taken")
    assert better["verdict"].endswith("the ladder in the code continues from a without it (it is measured, not selected)")
    one = ladder.decision([record("a", 0, 0.5, 0.5)], [record("b", 0, 0.6, 0.5)], in_ladder=False)
    assert one["outcome"] == "no clear difference" and one["interval"] is None and one["se"] is None
    assert one["verdict"].startswith("no clear difference, not taken: validation accuracy rose by 10.0 points on "
                                     "average over 1 subset, rising in 1 of them (+10.0 points)")
    assert one["verdict"].endswith("the ladder continues from a")
    assert "`" not in one["verdict"]  # plain text


def test_a_decision_over_records_of_two_precisions_says_so():
    from cifar_tl.book import pages

    base, new = _three("a", (0.50, 0.60, 0.70)), _three("b", (0.53, 0.62, 0.71))
    for r in base + new:
        r["config"]["precision"] = "fp32"
    same = ladder.decision(base, new)
    assert same["precisions"] == ["fp32"] and "mix" not in same["verdict"] and "mix" not in pages.decision_text(same)
    new[1]["config"]["precision"] = "bf16"
    mixed = ladder.decision(base, new)
    assert mixed["precisions"] == ["bf16", "fp32"]
    assert ladder.MIXED_PRECISIONS in mixed["verdict"] and ladder.MIXED_PRECISIONS in pages.decision_text(mixed)
    new[1]["config"]["seed"] = 5  # a bf16 record the pairing leaves out changes nothing
    assert ladder.decision(base, new)["precisions"] == ["fp32"]


def test_decision_needs_a_shared_subset():
    with pytest.raises(ValueError, match="share no subset"):
        ladder.decision([record("a", 0, 0.5, 0.5)], [record("b", 1, 0.5, 0.5)])


# What each rung changes against the one it builds on: the rows of recipe_cards.recipe_diff. A new rung must be
# declared here, and changes nothing but what is declared. Rungs that change the stages themselves are checked
# by structure below.
ONE_CHANGE = {
    "ft_cosine": {"stage 1 · schedule", "stage 1 · warmup_epochs"},  # the schedule: a warm-up, then cosine
    "ft_discriminative": {"stage 1 · lr_decay"},
    "ft_lower_lr": {"stage 1 · lr"},
    "ft_bn_frozen": {"stage 2 · trainable_bn"},
    "ft_crop_flip": {"augment"},
    "ft_mix": {"mixup_alpha", "cutmix_alpha"},  # one of the two per batch: one change, mixing
    "ft_label_smoothing": {"label_smoothing"},
    "ft_weight_decay": {"weight_decay"},
    "self_training": {"self-training"},
    "fixmatch": {"consistency"},
}
# Rungs that make two changes at once say so in their description, and chapter 10 shows each alone.
TWO_CHANGES = {
    "ft_regularised": {"label_smoothing", "weight_decay", "report_tta"},  # report_tta: evaluation only
    "full": {"tta", "ema_decay", "report_tta"},
}


def test_ladder_follows_the_recipes_from_naive_to_full():
    line = ladder.ladder()
    assert line[0] == "finetune_naive" and line[-1] == "full"
    assert "ft_gradual" not in line and "ft_label_smoothing" not in line  # side steps
    assert line.index("ft_discriminative") < line.index("ft_lower_lr") < line.index("ft_lpft") < line.index("ft_bn_frozen")


def test_every_rung_changes_exactly_what_it_says():
    staged = {"ft_lpft", "ft_gradual"}
    assert set(ladder.LADDER_BASES) == set(ONE_CHANGE) | set(TWO_CHANGES) | staged
    for new, base in ladder.LADDER_BASES.items():
        assert base in RECIPES[new].description, f"{new}'s description does not name {base}, the recipe it changes"
        if new in staged:
            continue
        changed = set(recipe_cards.recipe_diff(base, new).index)
        expected = ONE_CHANGE.get(new) or TWO_CHANGES[new]
        assert changed == expected, f"{new} changes {changed} of {base}, not {expected}"
        if new in TWO_CHANGES:
            assert "two changes" in RECIPES[new].description


def test_the_staged_rungs_change_only_how_training_is_staged():
    """LP-FT puts a linear probe in front of its base's stage, unchanged; gradual unfreezing spreads its
    base's epochs over stages and ends at its base's rate and decay. Nothing else differs."""
    from dataclasses import replace

    base = RECIPES["ft_lower_lr"]
    for name in ("ft_lpft", "ft_gradual"):
        recipe = RECIPES[name]
        assert replace(recipe, name=base.name, description=base.description, builds_on=base.builds_on,
                       chapter=base.chapter, stages=base.stages) == base, f"{name} changes more than its stages"
        assert all(stage.lr == base.stages[0].lr for stage in recipe.stages if stage.train != "head"), name
    lpft = RECIPES["ft_lpft"]
    assert lpft.stages[1:] == base.stages and lpft.stages[0].train == "head" and not lpft.stages[0].augment
    gradual = RECIPES["ft_gradual"]
    assert sum(s.epochs for s in gradual.stages) == base.stages[0].epochs
    assert gradual.stages[-1].train == "all" and gradual.stages[-1].lr_decay == base.stages[0].lr_decay


def test_profile_caveat_says_when_a_verdict_means_nothing():
    assert "smoke profile" in ladder.profile_caveat("smoke") and "full profile" in ladder.profile_caveat("smoke")
    assert "`" not in ladder.profile_caveat("smoke")
    assert "3 subsets" in ladder.profile_caveat("full")
