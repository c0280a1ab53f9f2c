"""cifar_tl.ladder: the ladder of recipes, and decisions made on validation accuracy only (paired by
subset). Records are built by hand."""

from __future__ import annotations

import pytest

from cifar_tl import ladder, recipe_info
from cifar_tl.recipes import RECIPES


def record(recipe: str, seed: int, val: float, test: float, **extra) -> dict:
    return {"config": {"recipe": recipe, "seed": seed, "backbone": "efficientnet_lite0", "profile": "full",
                       "image_size": 224},
            "metrics": {"val_accuracy": val, "test_accuracy": test, "test_images": 10000}, **extra}


def test_decision_keeps_a_change_that_raises_mean_validation_accuracy_paired_by_seed():
    base = [record("a", 0, 0.50, 0.50), record("a", 1, 0.60, 0.60)]
    new = [record("b", 1, 0.61, 0.40), record("b", 0, 0.53, 0.40)]  # another order: paired by seed, not position
    d = ladder.decision(base, new)
    assert d["deltas"] == pytest.approx({1: 0.01, 0: 0.03})
    assert d["mean_delta"] == pytest.approx(0.02)
    assert d["supported"] and d["n"] == 2 and d["rose_in"] == 2
    assert d["verdict"] == ("kept: validation accuracy rose by 2.0 points on average over 2 subsets, rising in 2 of "
                            "them (+1.0, +3.0 points)")


def test_decision_ignores_test_accuracy_and_says_when_validation_does_not_support_a_kept_step():
    base = [record("a", 0, 0.50, 0.10), record("a", 1, 0.60, 0.10)]
    new = [record("b", 0, 0.49, 0.90), record("b", 1, 0.58, 0.90)]  # test soars, validation falls
    d = ladder.decision(base, new)
    assert not d["supported"]
    assert d["mean_delta_points"] == "-1.5"
    assert d["verdict"].startswith("not supported in this build: validation accuracy fell by 1.5 points on average "
                                   "over 2 subsets, rising in 0 of them (-1.0, -2.0 points)")
    assert "keeps the step anyway, pending the full-profile reference runs" in d["verdict"]


def test_decision_words_side_steps_and_ties():
    base = [record("a", 0, 0.5, 0.5)]
    assert ladder.decision(base, [record("b", 0, 0.6, 0.5)], in_ladder=False)["verdict"].startswith(
        "supported in this build but not taken")
    tie = ladder.decision(base, [record("b", 0, 0.5, 0.9)], in_ladder=False)
    assert not tie["supported"]
    assert tie["verdict"].startswith("not kept: validation accuracy did not change on average over 1 subset, rising in 0")
    assert tie["verdict"].endswith("the ladder continues from a")
    assert "`" not in tie["verdict"]  # plain text: glue:text shows Markdown marks as they are


def test_decision_needs_a_shared_subset():
    with pytest.raises(ValueError, match="share no subset"):
        ladder.decision([record("a", 0, 0.5, 0.5)], [record("b", 1, 0.5, 0.5)])


def test_ladder_follows_the_recipes_from_naive_to_full():
    line = ladder.ladder()
    assert line[0] == "finetune_naive" and line[-1] == "full"
    assert "ft_gradual" not in line  # a side step
    assert line.index("ft_lpft") < line.index("ft_bn_frozen") < line.index("ft_crop_flip")
    for new, base in ladder.LADDER_BASES.items():
        assert new in RECIPES and base in RECIPES
        changed = recipe_info.recipe_diff(base, new)
        assert len(changed) > 0, f"{new} does not change {base}"
        if len(RECIPES[new].stages) == len(RECIPES[base].stages):
            assert len(changed) <= 2, f"{new} changes more than one thing of {base}:\n{changed}"


def test_profile_caveat_says_when_a_verdict_means_nothing():
    assert "smoke profile" in ladder.profile_caveat("smoke") and "full profile" in ladder.profile_caveat("smoke")
    assert "`" not in ladder.profile_caveat("smoke")
    assert "3 subsets" in ladder.profile_caveat("full")
