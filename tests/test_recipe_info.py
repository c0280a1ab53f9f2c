"""cifar_tl.book.recipe_cards: how two recipes differ, and the learning rates the trainer sets, replayed step by step."""

from __future__ import annotations

import math

import pytest

from cifar_tl.book import recipe_cards
from cifar_tl.training.recipes import RECIPES


def test_recipe_diff_lists_only_what_changed():
    diff = recipe_cards.recipe_diff("ft_bn_frozen", "ft_crop_flip")
    assert list(diff.index) == ["augment"]
    assert diff.loc["augment"].tolist() == ["none", "crop_flip"]
    two = recipe_cards.recipe_diff("ft_discriminative", "ft_lpft")
    assert two.loc["stages"].tolist() == ["1", "2"]
    assert two.loc["stage 2", "ft_discriminative"] == "–"
    assert "trains every group" in two.loc["stage 2", "ft_lpft"]
    assert not any(key.startswith("stage 2 ·") for key in two.index)  # a new stage shows in one line


def test_learning_rates_follow_warm_up_cosine_and_the_per_group_decay():
    groups = ["stem", "mid", "top", "head"]
    rates = recipe_cards.learning_rates("ft_discriminative", groups, train_images=1000, max_epochs=2)
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
    rates = recipe_cards.learning_rates("ft_gradual", groups, train_images=640)
    first = rates[rates["stage"] == 1]
    assert first[["stem", "a", "b", "c", "d"]].isna().all().all() and first["head"].notna().all()
    second = rates[rates["stage"] == 2]
    assert second[["stem", "a"]].isna().all().all() and second[["b", "c", "d", "head"]].notna().all().all()
    assert rates.index[-1] == pytest.approx(sum(s.epochs for s in RECIPES["ft_gradual"].stages) - 0.1)


def test_the_smoke_profile_caps_each_stage_of_the_learning_rates():
    rates = recipe_cards.learning_rates("ft_lpft", ["stem", "head"], train_images=1000, max_epochs=2)
    assert sorted(set(rates["stage"])) == [1, 2]
    assert math.isclose(rates.index[-1], 4 - 1 / 15)
