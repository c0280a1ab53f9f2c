"""The campaign's order (chapters in reading order, cheapest first within one) and its time budget
(`--minutes`, `--until`: no run is started that its measured timings say cannot finish in time)."""

from __future__ import annotations

import json
import time
from datetime import datetime

import pytest

from cifar_tl import cli
from cifar_tl.records import campaign
from cifar_tl.records.campaign import PlannedRun, Status, book_chapters, campaign_order, chapter_runs, run_campaign


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CIFAR_TL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CIFAR_TL_RENDER_ONLY", raising=False)


def test_the_campaign_goes_through_the_chapters_in_reading_order_cheapest_first_within_each(monkeypatch):
    chapter_of = {}
    for chapter in book_chapters():
        for planned in chapter_runs(chapter):
            chapter_of.setdefault(planned, chapter)
    everything = list(chapter_of)
    cost = {planned: float(len(everything) - i) for i, planned in enumerate(everything)}  # later runs cheaper
    monkeypatch.setattr(campaign, "estimate_seconds", lambda run, done, slug: (cost[run], "measured"))
    ordered = campaign_order(everything[::-1], Status({}, everything, []), "here")
    chapters_in_order = [chapter_of[r] for r in ordered]
    assert chapters_in_order == sorted(chapters_in_order)  # reading order: 02-scratch before 13-unlabelled
    for chapter in set(chapters_in_order):
        costs = [cost[r] for r in ordered if chapter_of[r] == chapter]
        assert costs == sorted(costs), f"{chapter}: not cheapest first"


def test_a_deadline_keeps_the_campaign_from_starting_runs_that_cannot_finish(tiny_dataset, tmp_path, monkeypatch,
                                                                             capsys):
    results = tmp_path / "results"
    monkeypatch.setenv("CIFAR_TL_RESULTS", str(results))
    planned = [PlannedRun("linear_probe", "simple_cnn", seed) for seed in range(3)]
    monkeypatch.setattr(campaign, "book_runs", lambda: planned)
    small = dict(per_class=5, val_per_class=5, image_size=32, epochs=1, precision="fp32", device="cpu")
    real_make_config = campaign.make_config
    monkeypatch.setattr(campaign, "make_config", lambda *a, **k: real_make_config(*a, **{**k, **small}))
    estimates = {0: 60.0, 1: 3600.0, 2: None}  # seed 2 never measured: nothing says it cannot finish
    monkeypatch.setattr(campaign, "estimate_seconds", lambda run, done, slug: (estimates[run.seed], "measured"))

    trained = run_campaign(results, data=str(tiny_dataset), device="cpu", progress=False,
                           deadline=time.time() + 600)
    err = capsys.readouterr().err
    assert trained == 2
    seeds = sorted(json.loads(p.read_text())["config"]["seed"] for p in results.glob("*/*.json"))
    assert seeds == [0, 2]
    assert "not starting 1 run(s) that cannot finish by" in err and "linear_probe-simple_cnn-s1 (≈ 60 min)" in err
    assert err.rstrip().endswith("cifar-tl: campaign: no missing run fits in the time left")


def test_deadlines_from_minutes_or_a_time_of_day():
    now = datetime(2026, 12, 1, 14, 30).timestamp()
    assert campaign.deadline_from(90, None, now) == now + 5400
    assert campaign.deadline_from(None, (16, 0), now) == datetime(2026, 12, 1, 16, 0).timestamp()
    assert campaign.deadline_from(None, (9, 15), now) == datetime(2026, 12, 2, 9, 15).timestamp()  # passed: tomorrow
    assert campaign.deadline_from(None, None, now) is None


@pytest.mark.parametrize("arguments, message", [
    (["--until", "25:00"], "argument --until: '25:00' is not a time of day as HH:MM (00:00 to 23:59)"),
    (["--until", "soon"], "argument --until: 'soon' is not a time of day as HH:MM"),
    (["--minutes", "0"], "argument --minutes: must be at least 1, got 0"),
    (["--minutes", "5", "--until", "10:00"], "argument --until: not allowed with argument --minutes"),
])
def test_a_bad_budget_is_one_line_and_exit_status_2(arguments, message, capsys):
    assert cli.main(["campaign", *arguments]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err


def _finished(recipe: str, train_seconds: float, rest: float = 100.0) -> dict:
    return {"timing": {"train_seconds": train_seconds, "total_seconds": train_seconds + rest},
            "machine": {"cpu": "test cpu", "cpu_count": 2, "cpu_capability": "AVX2"}}


def test_estimates_count_what_a_recipe_trains_beyond_its_own_stages():
    """Measured: finetune_naive, 15 fine-tuning epochs in 900 s, so 60 s an epoch. A run of another recipe
    is estimated from its own work, not from its stages alone."""
    done = {PlannedRun("finetune_naive", "efficientnet_lite0", 0): _finished("finetune_naive", 900.0)}
    slug = campaign.machine_slug_of(done[PlannedRun("finetune_naive", "efficientnet_lite0", 0)])

    def minutes(recipe):
        return campaign.estimate_seconds(PlannedRun(recipe, "efficientnet_lite0", 1), done, slug)[0] / 60

    assert minutes("finetune_naive") == pytest.approx(16 + 40 / 60)  # same recipe, this machine: its total
    teacher, student = campaign.RECIPES["full"], campaign.RECIPES["self_training"].self_training
    assert minutes("full") == pytest.approx(sum(s.epochs for s in teacher.stages if s.train != "head") + 100 / 60)
    # self-training: the teacher's epochs, plus a student over its labelled repeats and kept pseudo-labels, plus
    # labelling the pool: far more than the teacher alone
    kept = 10 * student.per_class / 1_000
    assert minutes("self_training") > minutes("full") + sum(
        s.epochs for s in student.stages if s.train != "head") * (student.labelled_repeats + kept)
    # training at 5/7 of the input size costs (5/7)^2 of the same epochs
    small = campaign.RECIPES["search_train_small"]
    assert minutes("search_train_small") == pytest.approx(
        sum(s.epochs for s in small.stages if s.train != "head") * (5 / 7) ** 2 + 100 / 60)
