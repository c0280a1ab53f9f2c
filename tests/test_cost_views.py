"""cifar_tl.book.cost_views: costs measured on the architecture, weights looked for without a download, and no
accuracy claimed for a backbone whose weights are absent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cifar_tl.book.cost_views import (NO_WEIGHTS_TEXT, accuracy_column, backbone_costs, bench_table, cost_table,
                                      precision_difference, precision_table, weights_available)


def test_backbone_costs_counts_and_latency():
    table = backbone_costs(["simple_cnn", "efficientnet_lite0"], image_size=32, repeats=2, warmup=1, progress=False)
    assert list(table.index) == ["simple_cnn", "efficientnet_lite0"]
    lite, cnn = table.loc["efficientnet_lite0"], table.loc["simple_cnn"]
    assert lite["total parameters"] == 3_383_818
    assert lite["trainable parameters"] == 12_810  # a linear probe trains the 1280x10 head only
    assert cnn["total parameters"] == cnn["trainable parameters"] == 288_746  # from scratch: all of it
    assert (table["CPU latency (ms)"] > 0).all()
    assert cnn["input size"] == 32 and lite["input size"] == 32
    # fp32 state dict: at least 4 bytes per parameter, and not much more (BatchNorm buffers).
    assert 3_383_818 * 4 / 2**20 <= lite["size (MB)"] < 3_383_818 * 4.1 / 2**20
    assert table.attrs["torch_threads"] == torch.get_num_threads()
    before = torch.get_num_threads()
    other = backbone_costs(["simple_cnn"], image_size=64, repeats=1, warmup=0, threads=before + 1, progress=False)
    assert other.attrs["torch_threads"] == before + 1
    assert other.loc["simple_cnn", "input size"] == 32  # its own size, whatever image_size says
    assert torch.get_num_threads() == before  # the thread count is restored
    if torch.cuda.is_available():  # measured on the GPU where there is one ...
        assert (table["GPU images/s"] > 0).all()
    else:
        assert table["GPU images/s"].isna().all()


def test_backbone_costs_claim_no_gpu_speed_without_a_gpu(monkeypatch):
    """... and left empty (never a number) where PyTorch sees none: simulated, so it is checked everywhere."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    table = backbone_costs(["simple_cnn"], image_size=32, repeats=1, warmup=0, progress=False)
    assert table["GPU images/s"].isna().all()
    assert (table["CPU latency (ms)"] > 0).all()


def test_weights_available_follows_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert Path(torch.hub.get_dir()) == tmp_path / "hub"  # read at call time
    assert not weights_available("resnet18")
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save({"w": torch.zeros(1)}, checkpoints / "resnet18-f37072fd.pth")
    assert weights_available("resnet18")
    assert not weights_available("resnet34")
    assert weights_available("efficientnet_lite0") and weights_available("simple_cnn")


def test_accuracy_column_claims_nothing_without_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    record = {"metrics": {"test_accuracy": 0.5}, "config": {"seed": 0}}
    column = accuracy_column({"resnet18": [record, record], "efficientnet_lite0": [record, record]},
                             ["efficientnet_lite0", "resnet18", "simple_cnn"])
    assert column["resnet18"] == NO_WEIGHTS_TEXT  # records given, but the weights are not here
    assert column["efficientnet_lite0"] == "50.0 ± 0.0% (n=2)"
    assert column["simple_cnn"] == "not run"


def _record(recipe, backbone, seed, seconds, accuracy):
    return {
        "config": {"recipe": recipe, "backbone": backbone, "seed": seed},
        "metrics": {"test_accuracy": accuracy},
        "timing": {"total_seconds": seconds, "train_seconds": seconds / 2, "feature_seconds": 0.0,
                   "train_images_per_second": 100.0, "eval_images_per_second": None, "device": "cpu"},
        "machine": {"cpu": "Test CPU", "torch_threads": 2, "gpu": None},
    }


def cost_runs() -> dict[str, list[dict]]:
    return {
        "scratch": [_record("scratch", "simple_cnn", s, 10.0 + s, 0.3) for s in (0, 1)],
        "probe": [_record("linear_probe", "efficientnet_lite0", s, 2.0, 0.6 + 0.1 * s) for s in (0, 1)],
    }


def test_cost_table():
    table = cost_table(cost_runs())
    assert table.loc["scratch", "seconds per run"] == pytest.approx(10.5)
    assert table.loc["probe", "test accuracy"].startswith("65.0 ± 7.1%")
    assert table.loc["probe", "evaluation images/s"] is None
    assert "Test CPU" in table.loc["probe", "machine"]


def _in_precision(precision: str, seed: int, accuracy: float, predictions: list[int]) -> dict:
    record = _record("full", "efficientnet_lite0", seed, 100.0, accuracy)
    record["config"]["precision"] = record["timing"]["precision"] = precision
    record["metrics"]["test_predictions"] = predictions
    return record


def _both_precisions() -> dict[str, list[dict]]:
    return {"fp32": [_in_precision("fp32", s, 0.80 + 0.01 * s, [0, 1, 2, 3]) for s in (0, 1, 2)],
            "bf16": [_in_precision("bf16", s, a, p) for s, a, p in
                     [(0, 0.805, [0, 1, 2, 0]), (1, 0.813, [0, 1, 2, 3]), (2, 0.822, [1, 1, 2, 3])]]}


def test_the_precision_comparison_pairs_subsets_and_counts_agreeing_predictions():
    both = _both_precisions()
    table = precision_table(both)
    assert list(table.index) == [0, 1, 2]
    assert list(table["bf16 − fp32 (points)"].round(6)) == [0.5, 0.3, 0.2]
    assert list(table["same prediction (%)"]) == [75.0, 100.0, 75.0]
    assert "fp32" in table.loc[0, "fp32 machine"] and "bf16" in table.loc[0, "bf16 machine"]
    difference = precision_difference(both)
    assert difference["n"] == 3 and difference["mean"] == pytest.approx(1 / 3)
    low, high = difference["interval"]
    assert low < difference["mean"] < high
    assert difference["outcome"] == "better"  # every subset agrees and the mean clears two standard errors
    none = {"fp32": [], "bf16": []}
    assert precision_table(none).empty and "bf16 − fp32 (points)" in precision_table(none).columns
    assert precision_difference(none) == {"n": 0, "mean": None, "se": None, "interval": None, "outcome": None}


def test_bench_table_reads_committed_benches_of_one_backbone_and_size(tmp_path, monkeypatch):
    bench = {"backbone": "efficientnet_lite0", "image_size": 224, "precision": "bf16", "compile": False, "steps": 8,
             "train_images_per_second": 9.0, "eval_images_per_second": 80.0, "machine": {"cpu": "Test CPU"}}
    folder = tmp_path / "results" / "some-machine" / "bench"
    folder.mkdir(parents=True)
    (folder / "a.json").write_text(json.dumps(bench))
    (folder / "b.json").write_text(json.dumps({**bench, "image_size": 32}))
    (folder / "c.json").write_text(json.dumps({**bench, "compile": True}))
    (folder / "d.json").write_text("not json")
    monkeypatch.setenv("CIFAR_TL_RESULTS", str(tmp_path / "results"))
    table = bench_table("efficientnet_lite0", 224)
    assert table.to_dict("records") == [{"machine": "Test CPU", "precision": "bf16", "training images/s": 9.0,
                                         "evaluation images/s": 80.0, "steps": 8}]


def test_python_m_cifar_tl_book_prints_the_precision_table(monkeypatch, capsys):
    from cifar_tl.book import chapter
    from cifar_tl.book.__main__ import main

    monkeypatch.setattr(chapter, "recorded_in_both_precisions", lambda *a, **k: _both_precisions())
    assert main(["precision-table"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| subset | fp32 test (%) | bf16 test (%) |")
    assert lines[2].startswith("| 0 | 80.00 | 80.50 | +0.50 | 75.0 |")
    assert lines[-1].startswith("bf16 − fp32: +0.33 points over 3 subset(s), 95% interval ")
    monkeypatch.setattr(chapter, "recorded_in_both_precisions", lambda *a, **k: {"fp32": [], "bf16": []})
    assert main(["precision-table"]) == 0
    assert capsys.readouterr().out.startswith("no subset of `full`")
