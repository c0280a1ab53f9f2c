"""`cifar-tl bench`: the JSON it promises, and the library's batch preparation measured against the model."""

from __future__ import annotations

import json
import time

import pytest
import torch
from torch import nn

from cifar_tl.core.device import pick_device, place_model, resolve_precision
from cifar_tl.models.backbones import create_model
from cifar_tl.records.bench import _BENCH_RECIPE, _images
from cifar_tl.training.loop import make_batch, training_step
from cifar_tl.training.schedule import make_optimizer, set_trainable


@pytest.mark.precision
def test_bench_json_has_the_promised_keys_and_sane_values(cli_main, asked_precision):
    """On the default device (the GPU if there is one), in the precision asked for (--precision, default
    auto): the result says which device and which resolved precision it measured."""
    done = cli_main("bench", "--backbone", "simple_cnn", "--image-size", "32", "--steps", "3", "--batch-size", "16",
                    "--workers", "0", "--precision", asked_precision, "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)  # stdout is exactly the JSON object
    for key in ("train_images_per_second", "naive_train_images_per_second", "eval_images_per_second",
                "overhead_fraction", "backbone", "image_size", "machine"):
        assert key in result, key
    assert result["backbone"] == "simple_cnn" and result["image_size"] == 32
    device = pick_device(None)
    assert result["device"] == str(device)
    assert result["precision"] == resolve_precision(asked_precision, device) and result["naive_precision"] == "fp32"
    assert result["train_images_per_second"] > 0 and result["naive_train_images_per_second"] > 0
    assert 0.0 <= result["overhead_fraction"] < 1.0
    assert result["machine"]["cpu"]


def _fastest_cpu_seconds(work, repeats: int) -> float:
    """The least CPU time of this thread over `repeats` calls of `work`. Thread CPU time does not count the
    time another process (a campaign) holds the core, and the fastest call is the one least disturbed; with
    one intra-op thread (conftest) every kernel runs on this thread, backward included."""
    best = float("inf")
    for _ in range(repeats):
        started = time.thread_time()
        work()
        best = min(best, time.thread_time() - started)
    return best


def test_the_model_dominates_the_library_step_on_efficientnet():
    """The library's batch preparation (gather the uint8 images, resize, crop, flip and normalise the whole
    batch in one grid_sample: `make_batch`) costs under a tenth of the model's forward, backward and optimizer
    step (`training_step`) on EfficientNet-Lite0, on the CPU in fp32. (The issue's bar is 0.10 at 128x128;
    at 64x64 the model's share is smaller, a harder case.)"""
    assert torch.get_num_threads() == 1
    device = torch.device("cpu")
    torch.manual_seed(0)
    model = place_model(create_model("efficientnet_lite0", 10), device)
    stage = _BENCH_RECIPE.stages[0]
    optimizer = make_optimizer(model, stage, _BENCH_RECIPE, set_trainable(model, stage))
    loss_fn = nn.CrossEntropyLoss()
    images, labels = _images(512)
    generator = torch.Generator().manual_seed(0)
    index = torch.randint(0, len(images), (32,), generator=generator)
    x = make_batch(images, index, model, 64, _BENCH_RECIPE.augment, generator)
    targets = labels[index]
    training_step(model, x, targets, optimizer, loss_fn, device, "fp32")  # warm-up: allocations, first kernels

    preparing = _fastest_cpu_seconds(lambda: make_batch(images, index, model, 64, _BENCH_RECIPE.augment, generator), 9)
    stepping = _fastest_cpu_seconds(lambda: training_step(model, x, targets, optimizer, loss_fn, device, "fp32"), 4)
    share = preparing / (preparing + stepping)
    assert share < 0.10, f"batch preparation {preparing * 1e3:.1f} ms against the model's {stepping * 1e3:.1f} ms"


def test_bench_rejects_a_device_it_does_not_have(cli_main, one_error_line):
    one_error_line(cli_main("bench", "--device", "tpu"), "device 'tpu'")
