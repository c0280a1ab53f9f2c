"""`cifar-tl bench`: the JSON it promises, and the library's loop measured against the naive one."""

from __future__ import annotations

import json
import subprocess
import sys

from cifar_tl.bench import bench


def test_bench_json_has_the_promised_keys_and_sane_values():
    done = subprocess.run(
        [sys.executable, "-m", "cifar_tl.cli", "bench", "--backbone", "simple_cnn", "--image-size", "32",
         "--steps", "3", "--batch-size", "16", "--workers", "0", "--json"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    for key in ("train_images_per_second", "naive_train_images_per_second", "eval_images_per_second",
                "overhead_fraction", "backbone", "image_size", "machine"):
        assert key in result, key
    assert result["backbone"] == "simple_cnn" and result["image_size"] == 32
    assert result["train_images_per_second"] > 0 and result["naive_train_images_per_second"] > 0
    assert 0.0 <= result["overhead_fraction"] < 1.0
    assert result["machine"]["cpu"]


def test_the_model_dominates_the_library_step_on_efficientnet():
    # At 64x64 the model's arithmetic must dwarf batch preparation (the bar is 0.10 at 128x128,
    # measured in the note; a smaller size keeps the test quick and is a harder case for the ratio).
    result = bench("efficientnet_lite0", image_size=64, device="cpu", batch_size=32, steps=3, workers=0,
                   progress=False)
    assert result["overhead_fraction"] < 0.10, result


def test_bench_rejects_a_device_it_does_not_have():
    done = subprocess.run([sys.executable, "-m", "cifar_tl.cli", "bench", "--device", "tpu"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "device 'tpu'" in done.stderr
