"""Mechanics of the techniques (not their accuracy): MixUp, CutMix, TTA, EMA, staged unfreezing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cifar_tl.data import augment
from cifar_tl.models.backbones import create_model
from cifar_tl.training.evaluate import compute_outputs
from cifar_tl.training.loop import train
from cifar_tl.training.recipes import RECIPES, Recipe, Stage


def test_mixup_blends_images_and_targets_with_the_drawn_lambda():
    x = torch.rand(6, 3, 8, 8)
    targets = torch.nn.functional.one_hot(torch.arange(6) % 3, 3).float()
    perm = torch.tensor([1, 2, 3, 4, 5, 0])
    mixed, soft = augment.mixup(x, targets, 0.3, perm)
    assert torch.allclose(mixed, 0.3 * x + 0.7 * x[perm])
    assert torch.allclose(soft.sum(1), torch.ones(6))
    assert torch.allclose(soft, 0.3 * targets + 0.7 * targets[perm])


@pytest.mark.parametrize("lam", [0.2, 0.5, 0.9])
def test_cutmix_box_area_matches_its_lambda(lam):
    rng = np.random.default_rng(0)
    x = torch.zeros(4, 3, 40, 40)
    x[2:] = 1.0  # the permuted half is ones, so the pasted box is visible
    perm = torch.tensor([2, 3, 0, 1])
    targets = torch.nn.functional.one_hot(torch.tensor([0, 0, 1, 1]), 2).float()
    mixed, soft, used = augment.cutmix(x, targets, lam, perm, rng)
    pasted = (mixed[0, 0] == 1.0).float().mean().item()  # share of image 0 that came from image 2
    assert pasted == pytest.approx(1 - used, abs=1e-6)
    assert torch.allclose(soft[0], torch.tensor([used, 1 - used]))
    # Unclipped boxes have the area λ asks for (to a pixel's rounding); clipped ones are smaller.
    assert 1 - used <= (1 - lam) + 2 * np.sqrt(1 - lam) / 40 + 1e-6


def test_mix_batch_targets_always_sum_to_one():
    rng = np.random.default_rng(1)
    x = torch.rand(8, 3, 16, 16)
    labels = torch.randint(0, 5, (8,))
    for _ in range(20):
        _, soft = augment.mix_batch(x, labels, 5, 0.2, 1.0, rng)
        assert torch.allclose(soft.sum(1), torch.ones(8), atol=1e-6)


def test_tta_averages_the_views_it_says_it_does():
    x = torch.rand(2, 3, 32, 32)
    assert len(augment.tta_views(x, "none")) == 1
    flip = augment.tta_views(x, "flip")
    assert len(flip) == 2 and torch.equal(flip[1], torch.flip(x, dims=[-1]))
    views = augment.tta_views(x, "flip_shift")
    assert len(views) == 6
    assert torch.equal(views[2][..., :, 2:], x[..., :, :-2])  # shifted by 32 // 16 = 2 pixels

    class Probe(torch.nn.Module):  # its logits are the mean of the first channel's left half
        mean, std, body = (0.0,) * 3, (1 / 255,) * 3, None

        def forward(self, v):
            return torch.stack([v[:, 0, :, :16].mean((1, 2)), torch.zeros(len(v))], 1)

    images = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8)
    out = compute_outputs(Probe(), images, 32, 2, torch.device("cpu"), tta="flip")
    prepared = augment.prepare(images, 32, Probe.mean, Probe.std)
    expected = sum(Probe()(v).softmax(1) for v in augment.tta_views(prepared, "flip")) / 2
    assert torch.allclose(out.exp(), expected, atol=1e-5)


def _tiny_data(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randint(0, 60, (n, 16, 16, 3), dtype=torch.uint8, generator=g)
    x[y == 1, :, :, 0] += 150
    return x, y


def test_staged_unfreezing_keeps_frozen_groups_still_until_their_stage():
    torch.manual_seed(0)
    model = create_model("simple_cnn", 2)
    x, y = _tiny_data()
    recipe = Recipe("staged", "", (Stage(epochs=1, lr=1e-2, train="head"), Stage(epochs=1, lr=1e-2, train=2),
                                   Stage(epochs=1, lr=1e-2, train="all")), batch_size=8)
    snapshots = []
    for stage in recipe.stages:  # run stage by stage and snapshot the stem after each
        train(model, recipe, (stage,), x, y, x[:8], y[:8], 16, torch.device("cpu"), 0, progress=False)
        snapshots.append({n: p.detach().clone() for n, p in model.named_parameters()})
    block1 = [n for n in snapshots[0] if n.startswith("body.0.")]
    block3 = [n for n in snapshots[0] if n.startswith("body.2.")]
    torch.manual_seed(0)  # the same seed rebuilds the same initial weights
    initial = {n: p.detach().clone() for n, p in create_model("simple_cnn", 2).named_parameters()}
    assert all(torch.equal(snapshots[0][n], initial[n]) for n in block1 + block3)  # head only
    assert all(torch.equal(snapshots[1][n], initial[n]) for n in block1)  # top 2 groups: block3 + head
    assert any(not torch.equal(snapshots[1][n], initial[n]) for n in block3)
    assert any(not torch.equal(snapshots[2][n], snapshots[1][n]) for n in block1)  # all


def test_ema_weights_are_the_moving_average_not_the_last_step():
    """The trained model's weights are the exponential moving average of the weights after every optimizer
    step, with the warm-up of `ema_decay_at` (the first step copied), computed here from the steps
    themselves; without EMA they are the last step's. On the CPU in fp32."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    x, y = _tiny_data()
    for decay in (0.0, 0.9):
        torch.manual_seed(0)
        model = create_model("simple_cnn", 2)
        recipe = Recipe("ema", "", (Stage(epochs=2, lr=1e-2, train="all"),), batch_size=8, ema_decay=decay)
        steps = []  # every parameter after every optimizer step, as the average sees it
        hook = register_optimizer_step_post_hook(
            lambda *_: steps.append({n: p.detach().clone() for n, p in model.named_parameters()}))
        try:
            train(model, recipe, recipe.stages, x, y, x[:8], y[:8], 16, torch.device("cpu"), 0, progress=False,
                  precision="fp32")
        finally:
            hook.remove()
        assert len(steps) == 2 * (32 // 8)
        final = dict(model.named_parameters())
        if decay == 0:
            assert all(torch.equal(final[n], steps[-1][n]) for n in final)
            continue
        average = dict(steps[0])
        for t, weights in enumerate(steps[1:], start=1):
            d = min(decay, (1 + t) / (10 + t))  # the documented warm-up: 2/11 at the second step, then rising
            average = {n: d * average[n] + (1 - d) * w for n, w in weights.items()}
        for n in final:
            torch.testing.assert_close(final[n].detach(), average[n], rtol=1e-5, atol=1e-6, msg=n)
        assert any(not torch.equal(final[n], steps[-1][n]) for n in final)  # not the last step


def test_ema_warms_up_then_holds_its_decay():
    from torch.optim.swa_utils import AveragedModel

    from cifar_tl.training.loop import ema_update

    model = nn.Linear(1, 1, bias=False)
    ema = AveragedModel(model, use_buffers=True)
    ema.multi_avg_fn = ema_update(0.2, lambda: int(ema.n_averaged))
    assert ema.n_averaged.device.type == "cpu"  # the counter the update reads: no wait on a GPU
    expected = None
    for t, value in enumerate([4.0, 0.0, 0.0, 0.0, 8.0]):
        model.weight.data.fill_(value)
        ema.update_parameters(model)
        # the first update copies; update t then uses min(0.2, (1 + t) / (10 + t)): 2/11, then 0.2 from t = 2
        d = min(0.2, (1 + t) / (10 + t))
        expected = value if expected is None else d * expected + (1 - d) * value
        assert ema.module.weight.item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(4 * (2 / 11) * 0.2**3 + 0.8 * 8)


def test_the_ladder_changes_one_thing_at_a_time():
    steps = [(RECIPES[r.builds_on], r) for r in RECIPES.values() if r.builds_on]
    assert {b.name for _, b in steps} >= {"ft_cosine", "ft_discriminative", "ft_lpft", "ft_crop_flip", "ft_mix",
                                           "ft_regularised", "full"}
    for a, b in steps:
        before, after = a.name, b.name
        changed = [k for k in ("weight_decay", "label_smoothing", "augment", "mixup_alpha", "cutmix_alpha",
                               "tta", "ema_decay", "batch_size", "self_training", "consistency")
                   if getattr(a, k) != getattr(b, k)]
        assert len(changed) <= 2 and (changed or a.stages != b.stages), (before, after, changed)
