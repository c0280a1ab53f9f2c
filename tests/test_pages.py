"""What the pages say about their own runs, from hand-made records: the header's input size, tables that do not
show what they cannot pair, sentences that cannot claim more than their tables show, and the helpers behind
chapters 3, 4, 7, 11, 12 and 13 (each guards a page fault that was once on the built book)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cifar_tl.book import course, pages, recipe_cards, tables


def record(name="scratch", seed=0, val=0.5, test=0.5, size=32, **extra) -> dict:
    base = {"name": f"{name}-s{seed}", "config": {"recipe": name, "seed": seed, "image_size": size, "profile": "full"},
            "metrics": {"val_accuracy": val, "test_accuracy": test, "test_images": 10000, "test_limited": False},
            "data": {"name": "CIFAR-10 (JPEG q75 copy)", "counts": {"train": 1000, "val": 500, "test": 10000}}}
    for key, value in extra.items():
        base.setdefault(key, {})
        if isinstance(value, dict) and isinstance(base[key], dict):
            base[key].update(value)
        else:
            base[key] = value
    return base


# -- chapter 2: the header names the input the records used; a table of one setting pairs nothing -------------


def test_header_states_the_records_input_size_not_the_profiles():
    header = pages.page_header("full", "simple_cnn", [record(size=32)])
    assert "32×32 input" in header
    assert "224x224 input" not in header and "224×224 input" not in header
    assert "224×224 input" in pages.page_header("full", "efficientnet_lite0", [record(size=224)])


def test_smoke_header_carries_the_banner_the_book_lifts_to_the_top():
    header = pages.page_header("smoke", "efficientnet_lite0", [record(size=32)])
    assert pages.SMOKE_BANNER in header and "not meaningful" in header
    assert pages.SMOKE_BANNER not in pages.page_header("full", "efficientnet_lite0", [record(size=224)])


def test_a_table_of_one_setting_has_no_paired_column():
    one = tables.comparison_table({"scratch": [record(seed=0), record(seed=1)]})
    assert not [c for c in one.columns if "paired" in c]
    two = tables.comparison_table({"a": [record(seed=0, test=0.5)], "b": [record(seed=0, test=0.6)]})
    assert two.loc["b", "paired Δ vs a (pp)"] == "+10.0" and two.loc["a", "paired Δ vs a (pp)"] == "–"


# -- chapter 3: the pairs sentence names every pair that rose; C at the grid's edge; where the time goes -------


def test_pairs_sentence_names_the_pairs_that_rose():
    pairs = pd.DataFrame({"scratch": [927, 500], "linear probe": [1032, 100]}, index=["cat – dog", "automobile – truck"])
    sentence = tables.pairs_sentence(pairs)
    assert "1 less often" in sentence and "1 more often" in sentence
    assert "cat – dog (927 → 1,032)" in sentence
    assert "could not teach" not in sentence


def test_probe_grid_edges_and_time_split():
    probe = {"C_grid": [1.0, 0.1, 0.01, 0.001]}
    records = [record("linear_probe", s, metrics={"sklearn_probe": {**probe, "C": c}},
                      timing={"total_seconds": 100.0, "feature_seconds": 15.0, "train_seconds": 1.0,
                              "eval_seconds": 80.0})
               for s, c in ((0, 0.1), (1, 0.001), (2, 1.0))]
    assert tables.probe_grid_edges(records) == {1: "smallest", 2: "largest"}
    split = tables.probe_time_split(records)
    assert split["test"] == pytest.approx(0.8) and split["head"] == pytest.approx(0.01)
    assert split["other"] == pytest.approx(0.04)


# -- chapters 4 and 7: distances from the pretrained weights, and records that lack them ----------------------


def test_distances_are_read_when_stored_and_their_absence_is_named():
    old = record("finetune_naive", 0, history=[{"epoch": 1, "stage": 1}])
    new = record("finetune_naive", 1, model={"distance_from_pretrained": {"stem": 0.02, "head": 3.0}},
                 history=[{"epoch": 1, "stage": 1, "distance_from_pretrained": {"stem": 0.01, "head": 2.0}},
                          {"epoch": 2, "stage": 1, "distance_from_pretrained": {"stem": 0.02, "head": 3.0}}])
    table, missing = tables.distances_from_pretrained([old, new])
    assert missing == ["finetune_naive-s0"]
    assert table.loc["stem"].iloc[0] == pytest.approx(0.02)
    history = tables.distance_history([old, new])
    assert list(history.index) == [1, 2] and history.loc[2, "stem"] == pytest.approx(0.02)
    assert tables.distances_from_pretrained([old]) == (None, ["finetune_naive-s0"])
    assert tables.distance_history([old]) is None


# -- chapter 11: what the average really holds, and no share rounded to "0%" -----------------------------------


def test_ema_summary_replays_the_warm_up_and_never_rounds_a_share_to_zero():
    history = [{"epoch": e, "stage": 1 if e <= 20 else 2} for e in range(1, 36)]
    full = record("full", 0, size=224, history=history, recipe={"ema_decay": 0.99, "batch_size": 64})
    summary = recipe_cards.ema_summary(full)
    assert summary["steps_per_epoch"] == 15 and summary["updates"] == 35 * 15
    assert summary["cap_update"] == 890 and not summary["reaches_cap"]
    assert summary["final_decay"] == pytest.approx((1 + 524) / (10 + 524))
    assert sum(summary["stage_shares"]) == pytest.approx(1.0)
    assert 0 < summary["stage_shares"][0] < 0.05
    assert recipe_cards.fmt_share(summary["stage_shares"][0]) != "0%"
    assert recipe_cards.fmt_share(0.0004) == "less than 0.1%" and recipe_cards.fmt_share(0.0) == "none"
    assert recipe_cards.ema_summary(record("ft_mix", 0, recipe={"ema_decay": 0.0, "batch_size": 64})) is None


def test_as_evaluated_reads_both_ways_of_predicting_or_names_what_lacks_them():
    views = {"none": {"val_accuracy": 0.8, "test_accuracy": 0.79}, "flip": {"val_accuracy": 0.82, "test_accuracy": 0.8}}
    with_views = record("ft_regularised", 0, metrics={"by_test_time_views": views})
    flipped, lacking = course.as_evaluated([with_views], "flip")
    assert not lacking and flipped[0]["metrics"]["val_accuracy"] == 0.82
    assert with_views["metrics"]["val_accuracy"] == 0.5  # the record itself is untouched
    assert course.as_evaluated([record("full", 0)], "none") == (None, ["full-s0"])


# -- chapter 12: the recipe card, the confident mistakes, the effects of each step ----------------------------


def test_recipe_card_gives_every_stage_of_the_full_recipe_from_recipes_py():
    from cifar_tl.training.recipes import RECIPES

    card = recipe_cards.recipe_card("full", 224)
    recipe = RECIPES["full"]
    assert list(card.columns)[-1] == "evaluation" and len(card.columns) == len(recipe.stages) + 1
    fine_tune = card.columns[len(recipe.stages) - 1]
    assert card.loc["peak learning rate (head)", fine_tune] == f"{recipe.stages[-1].lr:g}"
    assert card.loc["weight decay", fine_tune] == f"{recipe.weight_decay:g}"
    assert card.loc["augmentation", card.columns[0]] == "none"  # the probe stage does not augment
    assert "mirror" in card.loc["test-time views", "evaluation"]
    assert "min(0.99" in card.loc["weights evaluated", "evaluation"]


def test_confident_mistakes_rank_wrong_predictions_by_probability_and_name_records_without_them():
    metrics = {"test_predictions": [0, 1, 2, 0], "test_labels": [0, 2, 1, 1], "test_indices": [10, 11, 12, 13],
               "test_confidence": [0.99, 0.7, 0.95, 0.4]}
    ranked, missing = tables.confident_mistakes([record("full", 0, metrics=metrics), record("full", 1)], k=2)
    assert missing == ["full-s1"]
    assert list(ranked["test index"]) == [12, 11] and ranked["probability"].iloc[0] == pytest.approx(0.95)
    assert tables.confident_mistakes([record("full", 1)]) == (None, ["full-s1"])


def test_directed_confusions_and_per_class_accuracy_sum_over_subsets():
    confusion = [[8, 2], [5, 5]]
    runs = [record("full", s, metrics={"confusion_matrix": confusion}) for s in (0, 1)]
    most = tables.directed_confusions(runs, ["cat", "dog"], k=1)
    assert most.iloc[0].tolist() == ["dog", "cat", 10, "50.0%"]
    recall = tables.per_class_accuracy({"full": runs}, ["cat", "dog"])
    assert recall.loc["cat", "full"] == pytest.approx(0.8)


def test_decision_table_shows_the_interval_when_the_decision_gives_one():
    decided = {"base": "a", "new": "b", "mean_delta": 0.01, "mean_delta_points": "+1.0", "deltas": {0: 0.01, 1: 0.01},
               "n": 2, "rose_in": 2, "supported": True, "in_ladder": True, "outcome": "better"}
    assert "95% interval (pp)" not in tables.decision_table([decided]).columns
    with_interval = {**decided, "interval_points": "-0.4 to +2.1", "outcome": "no clear difference"}
    table = tables.decision_table([with_interval])
    assert table.loc["a → b", "95% interval (pp)"] == "-0.4 to +2.1"
    assert table.loc["a → b", "outcome on validation"] == "no clear difference"
    text = pages.decision_text(with_interval)
    assert "-0.4 to +2.1" in text and "measured, not selected" in text


# -- chapter 13 and a1 ---------------------------------------------------------------------------------------


def test_a_range_with_equal_ends_is_not_written_as_a_range():
    assert course.fmt_range([500, 500]) == "500 on every subset"
    assert course.fmt_range([480, 500]) == "from 480 to 500"
    assert course.contradicted_claims("It kept 500 pseudo-labels per subset (from 500 to 500).", {})


def test_latency_is_compared_only_at_one_input_size():
    costs = pd.DataFrame({"input size": [32, 32, 240], "CPU latency (ms)": [5.0, 3.0, 1.0]},
                         index=["resnet18", "efficientnet_lite0", "efficientnet_lite1"])
    fastest, other = course.fastest_at_common_size(costs, list(costs.index), 32)
    assert fastest == "efficientnet_lite0" and other == ["efficientnet_lite1"]


# -- the checker of stale claims itself -------------------------------------------------------------------------


def test_contradicted_claims_catch_the_stale_sentences_and_spare_attributed_ones():
    full = {"full": [record("full", s, test=0.82, size=224, machine={"gpu": None}, timing={"device": "cpu"})
                     for s in (0, 1, 2)]}
    stale = ("We move towards a recipe that comes close to 90% test accuracy. The `full` profile's reference runs "
             "need a GPU. Without `--profile`, `cifar-tl book` chooses `full` when a GPU is available. The chapters "
             "written so far establish the baselines.")
    found = course.contradicted_claims(stale, full)
    assert len(found) == 4, found
    fine = ("The articles this book grew from report validation accuracy approaching 90%. Choose a GPU runtime on "
            "Colab.")
    assert course.contradicted_claims(fine, full) == []
    assert course.page_text("<p>a <b>b</b></p><script>x()</script>") .split() == ["a", "b"]


def test_standard_error_of_an_accuracy():
    assert course.standard_error(0.8, 500) == pytest.approx(np.sqrt(0.16 / 500))
