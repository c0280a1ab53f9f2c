"""cifar_tl.records.store: reading folders of run records, and what results/ holds."""

from __future__ import annotations

import json
from pathlib import Path

from cifar_tl.records import store


def record(recipe: str, seed: int, val: float, test: float, **extra) -> dict:
    return {"config": {"recipe": recipe, "seed": seed, "backbone": "efficientnet_lite0", "profile": "full",
                       "image_size": 224},
            "metrics": {"val_accuracy": val, "test_accuracy": test, "test_images": 10000}, **extra}


def test_read_records_skips_what_is_not_a_record(tmp_path):
    assert store.read_records(tmp_path / "missing") == ([], [])
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "full-s0.json").write_text(json.dumps(record("full", 0, 0.9, 0.88)))
    (tmp_path / "notes.json").write_text("[1, 2]")
    (tmp_path / "broken.json").write_text("{")
    records, skipped = store.read_records(tmp_path)
    assert [r["config"]["recipe"] for r in records] == ["full"]
    assert sorted(skipped) == ["broken.json", "notes.json"]


def test_committed_reference_records_are_whole_full_profile_runs():
    """What results/ holds is what chapter 12 and the README call reference runs."""
    records, skipped = store.read_records(Path(__file__).resolve().parents[1] / "results")
    assert skipped == []
    for r in records:
        name = f"{r['config']['recipe']} seed {r['config']['seed']}"
        assert r["config"]["profile"] == "full", name
        assert r["config"]["image_size"] == (r["recipe"]["image_size"] or 224), name
        assert r["config"]["test_limit"] is None and r["metrics"]["test_images"] == r["data"]["test_total"], name
        assert r["machine"]["cpu"] and r["code_version"] and r["data"]["name"], name
        assert len(r["metrics"]["test_predictions"]) == r["metrics"]["test_images"], name
