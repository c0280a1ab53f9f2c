"""The trainer: schedules, per-group learning rates, freezing (BatchNorm included), history, augmentation."""

from __future__ import annotations

import math

import pytest
import torch
from cifar_tl.data import augment
from cifar_tl.models.backbones import create_model
from cifar_tl.training.loop import train
from cifar_tl.training.recipes import Recipe, Stage
from cifar_tl.training.schedule import group_learning_rates, lr_factor, set_trainable, trainable_groups

CPU = torch.device("cpu")


# -- schedules ------------------------------------------------------------------------------------------


def test_constant_schedule_is_one_everywhere():
    assert [lr_factor("constant", step, 10) for step in range(10)] == [1.0] * 10


def test_cosine_starts_at_one_ends_at_zero_and_is_half_mid_way():
    total = 11
    factors = [lr_factor("cosine", step, total) for step in range(total)]
    assert factors[0] == pytest.approx(1.0)
    assert factors[-1] == pytest.approx(0.0, abs=1e-12)
    assert factors[5] == pytest.approx(0.5)
    assert all(a > b for a, b in zip(factors, factors[1:]))  # strictly decreasing
    for step, factor in enumerate(factors):
        assert factor == pytest.approx(0.5 * (1 + math.cos(math.pi * step / (total - 1))))


def test_warmup_rises_linearly_then_follows_the_schedule():
    warmup, total = 4, 15
    factors = [lr_factor("cosine", step, total, warmup) for step in range(total)]
    assert factors[:warmup] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    steps = [b - a for a, b in zip(factors[:warmup], factors[1 : warmup + 1])]
    assert steps == pytest.approx([0.2] * warmup)  # linear, reaching 1 at the end of warm-up
    assert factors[warmup] == pytest.approx(1.0)
    assert factors[-1] == pytest.approx(0.0, abs=1e-12)
    assert factors[warmup + 5] == pytest.approx(0.5)  # cosine mid-way after warm-up
    constant = [lr_factor("constant", step, total, warmup) for step in range(total)]
    assert constant[:warmup] == pytest.approx([0.2, 0.4, 0.6, 0.8]) and constant[warmup:] == [1.0] * (total - warmup)


# -- groups and learning rates -------------------------------------------------------------------------------


@pytest.fixture
def cnn():
    torch.manual_seed(0)
    return create_model("simple_cnn", num_classes=3)


def test_trainable_groups(cnn):
    assert cnn.group_names() == ["block1", "block2", "block3", "head"]
    assert trainable_groups(cnn, Stage(epochs=1, lr=1e-3, train="all")) == cnn.group_names()
    assert trainable_groups(cnn, Stage(epochs=1, lr=1e-3, train="head")) == ["head"]
    assert trainable_groups(cnn, Stage(epochs=1, lr=1e-3, train=2)) == ["block3", "head"]
    with pytest.raises(ValueError):
        trainable_groups(cnn, Stage(epochs=1, lr=1e-3, train=5))


def test_group_learning_rates_decay_below_the_head(cnn):
    rates = group_learning_rates(cnn, Stage(epochs=1, lr=1e-2, train="all", lr_decay=0.5))
    assert list(rates) == ["block1", "block2", "block3", "head"]
    assert rates["head"] == pytest.approx(1e-2)
    assert rates["block3"] == pytest.approx(5e-3)
    assert rates["block2"] == pytest.approx(2.5e-3)
    assert rates["block1"] == pytest.approx(1.25e-3)
    partial = group_learning_rates(cnn, Stage(epochs=1, lr=1e-2, train=2, lr_decay=0.1))
    assert partial == pytest.approx({"block3": 1e-3, "head": 1e-2})
    flat = group_learning_rates(cnn, Stage(epochs=1, lr=3e-4, train="all"))
    assert flat == pytest.approx(dict.fromkeys(cnn.group_names(), 3e-4))


def test_optimizer_decays_weights_only_and_carries_group_rates(cnn):
    from cifar_tl.training.schedule import make_optimizer

    stage = Stage(epochs=1, lr=1e-2, train=2, lr_decay=0.5)
    recipe = Recipe("test", "a test recipe", (stage,), weight_decay=0.05)
    optimizer = make_optimizer(cnn, stage, recipe, trainable_groups(cnn, stage))
    seen = set()
    for group in optimizer.param_groups:
        assert group["group"] in ("block3", "head")
        assert group["lr"] == group["base_lr"] == pytest.approx({"block3": 5e-3, "head": 1e-2}[group["group"]])
        for p in group["params"]:
            assert group["weight_decay"] == (0.05 if p.ndim > 1 else 0.0)
            seen.add(id(p))
    expected = {id(p) for name in ("block3", "head") for p in cnn.group_parameters(name)}
    assert seen == expected  # exactly the trained groups' parameters, each once


def test_set_trainable_freezes_and_sets_modes(cnn):
    set_trainable(cnn, Stage(epochs=1, lr=1e-3, train=2))
    for name, modules in cnn.layer_groups():
        trained = name in ("block3", "head")
        for module in modules:
            assert all(p.requires_grad == trained for p in module.parameters())
            assert all(m.training == trained for m in module.modules())


# -- training ---------------------------------------------------------------------------------------------


def _tiny_data(n_train=24, n_val=9, classes=3, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x_train = torch.randint(0, 256, (n_train, size, size, 3), generator=g, dtype=torch.uint8)
    x_val = torch.randint(0, 256, (n_val, size, size, 3), generator=g, dtype=torch.uint8)
    y_train = torch.arange(n_train) % classes
    y_val = torch.arange(n_val) % classes
    return x_train, y_train, x_val, y_val


def _snapshot(model, groups):
    """Parameters and buffers (BatchNorm running stats, batches tracked) of `groups`, cloned."""
    out = {}
    for name, modules in model.layer_groups():
        if name in groups:
            for i, module in enumerate(modules):
                for key, value in module.state_dict().items():
                    out[f"{name}.{i}.{key}"] = value.detach().clone()
    return out


def _bn_stats(model, group):
    return {k: v for k, v in _snapshot(model, [group]).items() if "running_" in k or "num_batches" in k}


def _train(model, stages, augment_mode="none", image_size=16, batch_size=8, seed=0, data=None):
    recipe = Recipe("test", "a test recipe", tuple(stages), batch_size=batch_size, augment=augment_mode,
                    weight_decay=1e-4)
    x_train, y_train, x_val, y_val = data or _tiny_data()
    return train(model, recipe, tuple(stages), x_train, y_train, x_val, y_val, image_size, CPU, seed,
                 progress=False)


def test_frozen_groups_stay_bit_identical_bn_statistics_included(cnn):
    frozen, trained = ["block1", "block2"], ["block3", "head"]
    before_frozen = _snapshot(cnn, frozen)
    before_trained = _snapshot(cnn, trained)
    assert any("running_mean" in key for key in before_frozen)
    _train(cnn, [Stage(epochs=2, lr=1e-2, train=2, schedule="constant")])
    after_frozen = _snapshot(cnn, frozen)
    assert after_frozen.keys() == before_frozen.keys()
    for key, value in before_frozen.items():
        assert torch.equal(after_frozen[key], value), f"frozen {key} changed"
    after_trained = _snapshot(cnn, trained)
    for key in before_trained:
        if key.endswith(("weight", "bias", "running_mean", "running_var")):
            assert not torch.equal(after_trained[key], before_trained[key]), f"trained {key} did not change"
    assert after_trained["block3.0.1.num_batches_tracked"] == 2 * 3  # 2 epochs of 24 // 8 steps


def test_frozen_bn_train_mode_updates_running_statistics_only(cnn):
    before = _snapshot(cnn, ["block1"])
    _train(cnn, [Stage(epochs=1, lr=1e-2, train=2, frozen_bn="train")])
    after = _snapshot(cnn, ["block1"])
    for key, value in before.items():
        if "running_" in key:
            assert not torch.equal(after[key], value), f"{key} should follow the batches with frozen_bn='train'"
        elif key.endswith(("weight", "bias")):
            assert torch.equal(after[key], value), f"frozen weight {key} changed"


def test_trainable_bn_eval_keeps_statistics_of_trained_groups(cnn):
    before = _bn_stats(cnn, "block3")
    before_weights = _snapshot(cnn, ["block3"])
    _train(cnn, [Stage(epochs=1, lr=1e-2, train=2, trainable_bn="eval")])
    after = _bn_stats(cnn, "block3")
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    assert not torch.equal(_snapshot(cnn, ["block3"])["block3.0.0.weight"], before_weights["block3.0.0.weight"])


def test_head_only_stage_trains_only_the_head(cnn):
    body = {k: v.clone() for k, v in cnn.body.state_dict().items()}
    head = {k: v.clone() for k, v in cnn.head.state_dict().items()}
    result = _train(cnn, [Stage(epochs=2, lr=1e-2, train="head")])
    for key, value in cnn.body.state_dict().items():
        assert torch.equal(value, body[key]), key
    assert not torch.equal(cnn.head.weight, head["weight"])
    assert result.feature_seconds > 0  # on cached features: no augmentation, frozen BatchNorm
    assert result.images_trained == 0
    assert [set(entry["lr"]) for entry in result.history] == [{"head"}, {"head"}]
    assert [entry["lr"]["head"] for entry in result.history] == pytest.approx([1e-2, 1e-2])


def test_history_has_one_entry_per_epoch_following_the_schedule(cnn):
    stages = [
        Stage(epochs=2, lr=1e-2, train=2, schedule="constant"),
        Stage(epochs=3, lr=1e-2, train="all", lr_decay=0.5, schedule="cosine"),
    ]
    result = _train(cnn, stages, batch_size=12)  # 24 images: 2 steps per epoch
    history = result.history
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5]
    assert [h["stage"] for h in history] == [1, 1, 2, 2, 2]
    for entry in history:
        for key in ("train_loss", "val_loss", "train_accuracy", "val_accuracy"):
            assert isinstance(entry[key], float) and math.isfinite(entry[key]), key
        assert 0 <= entry["train_accuracy"] <= 1 and 0 <= entry["val_accuracy"] <= 1
        assert entry["train_loss"] > 0 and entry["val_loss"] > 0
    # stage 1: the top two groups, constant
    for entry in history[:2]:
        assert entry["lr"] == pytest.approx({"block3": 1e-2, "head": 1e-2})
    # stage 2: every group, decayed, cosine over 3 epochs x 2 steps, read at each epoch's first step
    base = {"block1": 1.25e-3, "block2": 2.5e-3, "block3": 5e-3, "head": 1e-2}
    for epoch, entry in enumerate(history[2:]):
        factor = lr_factor("cosine", epoch * 2, 6)
        assert entry["lr"] == pytest.approx({k: v * factor for k, v in base.items()})
    assert history[3]["lr"]["head"] < history[2]["lr"]["head"]
    assert result.images_trained == 5 * 24
    assert result.train_seconds > 0


def test_training_learns_a_separable_task(cnn):
    """Not a placeholder: on classes that differ in brightness the trainer must beat chance clearly."""
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(60) % 3
    x = (labels.view(-1, 1, 1, 1) * 100 + torch.randint(0, 40, (60, 16, 16, 3), generator=g)).to(torch.uint8)
    data = (x[:45], labels[:45], x[45:], labels[45:])
    result = _train(cnn, [Stage(epochs=6, lr=3e-3, train="all")], batch_size=15, data=data)
    assert result.history[-1]["val_accuracy"] >= 0.8
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_same_seed_gives_the_same_training():
    histories = []
    for _ in range(2):
        torch.manual_seed(0)
        model = create_model("simple_cnn", num_classes=3)
        histories.append(_train(model, [Stage(epochs=2, lr=1e-2)], augment_mode="crop_flip").history)
    assert histories[0] == histories[1]


# -- augmentation -------------------------------------------------------------------------------------------

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def _images(n=6, size=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, size, size, 3), generator=g, dtype=torch.uint8)


def test_prepare_normalises_and_resizes():
    batch = _images(4, 20)
    same = augment.prepare(batch, 20, MEAN, STD)
    assert same.shape == (4, 3, 20, 20) and same.dtype == torch.float32
    expected = (batch.permute(0, 3, 1, 2).float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(
        STD
    ).view(1, 3, 1, 1)
    torch.testing.assert_close(same, expected)
    assert augment.prepare(batch, 48, MEAN, STD).shape == (4, 3, 48, 48)
    assert augment.prepare(batch, 8, MEAN, STD).shape == (4, 3, 8, 8)
    flat = torch.full((2, 10, 10, 3), 51, dtype=torch.uint8)
    for size in (5, 10, 32):
        out = augment.prepare(flat, size, MEAN, STD)
        torch.testing.assert_close(out, ((0.2 - torch.tensor(MEAN)) / torch.tensor(STD)).view(1, 3, 1, 1).expand(2, 3, size, size))


def test_random_crop_flip_shape_and_normalisation():
    batch = _images(5, 20)
    out = augment.random_crop_flip(batch, 32, MEAN, STD, torch.Generator().manual_seed(0))
    assert out.shape == (5, 3, 32, 32) and out.dtype == torch.float32
    flat = torch.full((3, 20, 20, 3), 153, dtype=torch.uint8)  # 0.6
    out = augment.random_crop_flip(flat, 24, MEAN, STD, torch.Generator().manual_seed(0))
    expected = ((0.6 - torch.tensor(MEAN)) / torch.tensor(STD)).view(1, 3, 1, 1).expand(3, 3, 24, 24)
    torch.testing.assert_close(out, expected)


def test_random_crop_flip_without_crop_is_prepare_or_its_mirror():
    batch = _images(16, 20)
    plain = augment.prepare(batch, 20, MEAN, STD)
    mirrored = torch.flip(plain, dims=[3])
    unflipped = augment.random_crop_flip(batch, 20, MEAN, STD, torch.Generator().manual_seed(0),
                                         scale=(1, 1), max_shift=0, flip=False)
    torch.testing.assert_close(unflipped, plain, atol=1e-5, rtol=0)
    out = augment.random_crop_flip(batch, 20, MEAN, STD, torch.Generator().manual_seed(0),
                                   scale=(1, 1), max_shift=0, flip=True)
    is_plain = [torch.allclose(o, p, atol=1e-5) for o, p in zip(out, plain)]
    is_mirror = [torch.allclose(o, m, atol=1e-5) for o, m in zip(out, mirrored)]
    assert all(a != b for a, b in zip(is_plain, is_mirror))  # each image is exactly one of the two
    assert any(is_mirror) and any(is_plain)  # with 16 images, both occur (seeded)


def test_random_crop_flip_is_seeded_and_varies():
    batch = _images(8, 20)
    a = augment.random_crop_flip(batch, 20, MEAN, STD, torch.Generator().manual_seed(3))
    b = augment.random_crop_flip(batch, 20, MEAN, STD, torch.Generator().manual_seed(3))
    c = augment.random_crop_flip(batch, 20, MEAN, STD, torch.Generator().manual_seed(4))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)
    assert not torch.allclose(a, augment.prepare(batch, 20, MEAN, STD))
