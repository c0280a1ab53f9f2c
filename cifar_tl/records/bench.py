"""`cifar-tl bench`: the library's training loop against a naive PyTorch pipeline, on one machine.

(a) training images/s of the library's loop (uint8 batches in memory, augmented on the device, in
the precision a run would use), (b) the same model trained the naive way (a torchvision Dataset with
per-image PIL transforms through a DataLoader, plain fp32), (c) evaluation images/s, and (d) the share
of the library's step time spent outside the model's forward, backward and optimizer step. With
`compile`, the library's loop runs the model through `torch.compile` and the compile time is reported
apart (runs do not compile: on the CPUs measured it did not pay, see the README's Speed section).
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from cifar_tl.core.device import machine
from cifar_tl.core.device import pick_device, place_model, resolve_precision
from cifar_tl.models.backbones import create_model
from cifar_tl.training.evaluate import compute_outputs
from cifar_tl.training.loop import make_batch, training_step
from cifar_tl.training.recipes import Recipe, Stage
from cifar_tl.training.schedule import make_optimizer, set_trainable

_BENCH_RECIPE = Recipe("bench", "every group trains, crop/flip augmentation",
                       (Stage(epochs=1, lr=1e-4, train="all"),), weight_decay=1e-4, augment="crop_flip")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _images(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random 32x32 uint8 images: speed does not depend on what the pixels show."""
    rng = np.random.default_rng(seed)
    return (torch.from_numpy(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)),
            torch.from_numpy(rng.integers(0, 10, n)))


def library_training(model, images, labels, image_size, batch_size, steps, warmup, device, progress,
                     precision="fp32", net=None):
    """Images/s of the library's step, the fraction of step time outside forward/backward/step, and the
    seconds of the first step (where torch.compile compiles). `net` runs the model (default: `model`)."""
    net = model if net is None else net
    stage = _BENCH_RECIPE.stages[0]
    groups = set_trainable(model, stage)
    optimizer = make_optimizer(model, stage, _BENCH_RECIPE, groups)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(0)
    images, labels = images.to(device), labels.to(device)
    total = model_time = first = 0.0
    for step in tqdm(range(warmup + steps), desc="library loop", disable=not progress, leave=False):
        _sync(device)
        started = time.perf_counter()
        index = torch.randint(0, len(images), (batch_size,), generator=generator).to(device)
        x = make_batch(images, index, model, image_size, _BENCH_RECIPE.augment, generator)
        targets = labels[index]
        _sync(device)
        model_started = time.perf_counter()
        training_step(net, x, targets, optimizer, loss_fn, device, precision)
        _sync(device)
        ended = time.perf_counter()
        if step == 0:
            first = ended - started
        if step >= warmup:
            total += ended - started
            model_time += ended - model_started
    return batch_size * steps / total, (total - model_time) / total, first


class _PilDataset(torch.utils.data.Dataset):
    """What a first pipeline looks like: one PIL image at a time through torchvision transforms."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, image_size: int, mean, std):
        from torchvision import transforms

        self.images, self.labels = images, labels
        self.transform = transforms.Compose([
            transforms.Resize(image_size),
            transforms.RandomCrop(image_size, padding=image_size // 8, padding_mode="edge"),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ])

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def naive_training(model, images, labels, image_size, batch_size, steps, warmup, device, workers, progress):
    """Images/s of the same model trained fp32, NCHW, from a DataLoader of PIL transforms."""
    model = model.to(device, memory_format=torch.contiguous_format)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    dataset = _PilDataset(images.numpy(), labels.numpy(), image_size, model.mean, model.std)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True,
                                         num_workers=workers, pin_memory=device.type == "cuda",
                                         persistent_workers=workers > 0)
    done, measured, started = 0, 0.0, None
    bar = tqdm(total=warmup + steps, desc="naive loop", disable=not progress, leave=False)
    while done < warmup + steps:
        for x, y in loader:
            if done == warmup:
                _sync(device)
                started = time.perf_counter()
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = loss_fn(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            done += 1
            bar.update()
            if done == warmup + steps:
                break
    _sync(device)
    measured = time.perf_counter() - started
    bar.close()
    return batch_size * steps / measured


def bench(backbone: str = "efficientnet_lite0", image_size: int = 224, device: str | None = None,
          batch_size: int | None = None, steps: int | None = None, workers: int | None = None,
          progress: bool = True, precision: str = "auto", compile: bool = False) -> dict:
    import os

    chosen = pick_device(device)
    precision = resolve_precision(precision, chosen)
    on_gpu = chosen.type == "cuda"
    batch_size = batch_size or (256 if on_gpu else 32)
    steps = steps or (50 if on_gpu else 8)
    warmup = 10 if on_gpu else 2
    workers = min(8, os.cpu_count() or 1) if workers is None else workers
    if on_gpu:
        torch.backends.cudnn.benchmark = True
    n_images = max(2048, batch_size * 4)
    images, labels = _images(n_images)
    torch.manual_seed(0)
    model = place_model(create_model(backbone, 10), chosen)
    net = torch.compile(model) if compile else model
    train_ips, overhead, first_step = library_training(model, images, labels, image_size, batch_size, steps, warmup,
                                                       chosen, progress, precision, net)

    _sync(chosen)
    eval_n = batch_size * steps
    started = time.perf_counter()
    compute_outputs(net, images[: batch_size * 2], image_size, batch_size, chosen, precision=precision)  # warm-up
    _sync(chosen)
    eval_warmup = time.perf_counter() - started
    started = time.perf_counter()
    compute_outputs(net, images[:eval_n], image_size, batch_size, chosen, precision=precision)
    _sync(chosen)
    eval_ips = eval_n / (time.perf_counter() - started)

    torch.manual_seed(0)
    naive_model = create_model(backbone, 10)
    naive_ips = naive_training(naive_model, images, labels, image_size, batch_size, steps, warmup, chosen, workers,
                               progress)
    return {
        "backbone": backbone,
        "image_size": image_size,
        "device": str(chosen),
        "batch_size": batch_size,
        "steps": steps,
        "train_images_per_second": train_ips,
        "naive_train_images_per_second": naive_ips,
        "speedup_over_naive": train_ips / naive_ips,
        "eval_images_per_second": eval_ips,
        "overhead_fraction": overhead,
        "naive_loader_workers": workers,
        "precision": precision,
        "naive_precision": "fp32",
        "compile": bool(compile),
        "first_train_step_seconds": first_step,  # includes the compilation when compiling
        "eval_warmup_seconds": eval_warmup,
        "machine": machine(),
    }
