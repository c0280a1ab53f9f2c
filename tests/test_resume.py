"""An interrupted run resumes from its last finished epoch (cifar_tl.core.resume, train's `state`), and on a CPU
in fp32 ends with the same record as a run never interrupted (timings aside). Everything here runs on the
CPU in fp32: bit-for-bit equality is what is tested."""

from __future__ import annotations

import pytest
from faults import comparable_record, interrupt_after_saves

from cifar_tl.core.files import cache_dir
from cifar_tl.records.identity import make_config
from cifar_tl.records.runner import run


def _config(data, recipe: str, backbone: str = "efficientnet_lite0", **overrides):
    options = dict(per_class=5, val_per_class=5, seed=0, profile="smoke", image_size=32, epochs=2,
                   precision="fp32", device="cpu")
    options.update(overrides)
    return make_config(recipe, backbone, data=str(data), **options)


@pytest.mark.parametrize("recipe, backbone, stop_after, resumed_at", [
    # in the fine-tuning stage of a real backbone (BatchNorm, dropout), with crop/flip, MixUp/CutMix, the
    # optimizer state, the EMA, the generators and test-time flips
    ("full", "efficientnet_lite0", 3, [3]),
    ("full", "simple_cnn", 1, [1]),  # in the linear-probe stage (cached features)
    ("ft_gradual", "simple_cnn", 4, [4]),  # at a stage boundary: the next stage starts a fresh optimizer
    ("linear_probe", "simple_cnn", 3, []),  # training finished, record not written: the probe's features come back
])
def test_an_interrupted_run_resumes_to_the_same_record(tiny_dataset, tmp_path, monkeypatch, recipe, backbone,
                                                       stop_after, resumed_at):
    monkeypatch.setenv("CIFAR_TL_CACHE", str(tmp_path / "uninterrupted"))
    config = _config(tiny_dataset, recipe, backbone)
    expected = run(config, progress=False, device="cpu")
    assert not list(cache_dir("runs").glob("*.state")), "the training state outlived its record"

    monkeypatch.setenv("CIFAR_TL_CACHE", str(tmp_path / "interrupted"))
    with monkeypatch.context() as patch:
        interrupt_after_saves(patch, stop_after)
        with pytest.raises(KeyboardInterrupt):
            run(config, progress=False, device="cpu")
    assert not list(cache_dir("runs").glob("*.json")), "an interrupted run left a record"
    states = list(cache_dir("runs").glob("*.state/*.pt"))
    assert states, "no training state was kept"

    resumed = run(config, progress=False, device="cpu")
    assert comparable_record(resumed) == comparable_record(expected)
    assert resumed["timing"]["resumed_at_epochs"] == resumed_at
    assert expected["timing"]["resumed_at_epochs"] == []
    assert not list(cache_dir("runs").glob("*.state")), "the training state outlived its record"


def test_self_training_resumes_inside_a_student_round(tiny_dataset, tmp_path, monkeypatch):
    """The teacher's training is not repeated: its finished state gives its weights back; the round's
    student resumes from its own last epoch."""
    config = _config(tiny_dataset, "self_training", backbone="simple_cnn")
    monkeypatch.setenv("CIFAR_TL_CACHE", str(tmp_path / "uninterrupted"))
    expected = run(config, progress=False, device="cpu")

    monkeypatch.setenv("CIFAR_TL_CACHE", str(tmp_path / "interrupted"))
    teacher_epochs = sum(1 for h in expected["history"] if h["phase"] == "teacher")
    with monkeypatch.context() as patch:
        interrupt_after_saves(patch, teacher_epochs + 2)  # the teacher's epochs, its finished state, one student epoch
        with pytest.raises(KeyboardInterrupt):
            run(config, progress=False, device="cpu")
    assert {p.name for p in cache_dir("runs").glob("*.state/*.pt")} == {"train.pt", "round1.pt"}
    resumed = run(config, progress=False, device="cpu")
    assert comparable_record(resumed) == comparable_record(expected)
    assert resumed["timing"]["resumed_at_epochs"] == [teacher_epochs + 1]  # the teacher's training was not repeated


def _interrupted_after_one_epoch(config, monkeypatch) -> None:
    with monkeypatch.context() as patch:
        interrupt_after_saves(patch, 1)
        with pytest.raises(KeyboardInterrupt):
            run(config, progress=False, device="cpu")


def test_force_discards_a_saved_state(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("CIFAR_TL_CACHE", str(tmp_path / "cache"))
    config = _config(tiny_dataset, "finetune_naive", backbone="simple_cnn")
    _interrupted_after_one_epoch(config, monkeypatch)
    record = run(config, progress=False, device="cpu", force=True)
    assert record["timing"]["resumed_at_epochs"] == []


def test_an_unreadable_state_starts_the_training_over(tiny_dataset, tmp_path, monkeypatch):
    """A state file cut short (a full disk, a crash in an old version without atomic writes) is not an error."""
    monkeypatch.setenv("CIFAR_TL_CACHE", str(tmp_path / "cache"))
    config = _config(tiny_dataset, "finetune_naive", backbone="simple_cnn")
    _interrupted_after_one_epoch(config, monkeypatch)
    (state,) = cache_dir("runs").glob("*.state/train.pt")
    state.write_bytes(state.read_bytes()[:100])
    record = run(config, progress=False, device="cpu")
    assert record["timing"]["resumed_at_epochs"] == []
    assert len(record["history"]) == 2


def test_records_say_how_far_each_group_moved(tiny_dataset, tmp_path, monkeypatch):
    """Per epoch and at the end, each layer group's relative distance from its starting weights: the
    linear probe's frozen body does not move at all, fine-tuning moves every group."""
    monkeypatch.setenv("CIFAR_TL_CACHE", str(tmp_path / "cache"))
    probe = run(_config(tiny_dataset, "linear_probe"), progress=False, device="cpu")
    tuned = run(_config(tiny_dataset, "finetune_naive"), progress=False, device="cpu")
    groups = probe["model"]["groups"]
    assert set(probe["model"]["distance_from_pretrained"]) == set(groups)
    assert all(probe["model"]["distance_from_pretrained"][g] == 0.0 for g in groups if g != "head")
    assert probe["model"]["distance_from_pretrained"]["head"] > 0
    assert all(tuned["model"]["distance_from_pretrained"][g] > 0 for g in groups)
    first, last = (tuned["history"][i]["distance_from_pretrained"] for i in (0, -1))
    assert sum(last.values()) > sum(first.values()) > 0
