"""The machine: which device trains, in which precision, and the facts a record keeps about the machine.

bf16 is used where the hardware computes it natively (a CUDA GPU with bf16, a CPU with AVX-512-BF16 or
AMX); elsewhere fp32, which is then both faster and exact.
"""

from __future__ import annotations

import os
import platform
from contextlib import nullcontext

import numpy as np
import torch
from torch import nn

from cifar_tl import __version__
from cifar_tl.core.errors import UserError


def tune_cpu_allocator() -> None:
    """Keep glibc from returning large blocks to the OS after every batch.

    PyTorch's CPU activations are tens of MB; by default glibc maps and unmaps them on each
    allocation, and the page faults cost as much as the convolutions (measured: about 1.5x the
    images/s on 2 cores with this). Harmless elsewhere; a no-op where glibc is absent.
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED:
        return
    _ALLOCATOR_TUNED = True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: the largest it may be
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
        libc.mallopt(-2, 256 << 20)  # M_TOP_PAD
    except (OSError, AttributeError):
        pass


_ALLOCATOR_TUNED = False


def eval_batch_size(device: torch.device) -> int:
    # Small batches stay in the CPU's caches; a GPU wants large ones.
    return 256 if device.type == "cuda" else 32


def pick_device(device: str | None = None) -> torch.device:
    """`device`, checked, or the GPU when there is one."""
    if not device:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} asked for, but PyTorch sees no CUDA GPU here; use --device cpu")
    if chosen.type not in ("cpu", "cuda"):
        raise UserError(f"device {device!r} is not supported; use cpu, cuda or cuda:N")
    return chosen


def place_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Move `model` to `device` in channels-last layout (faster for these convnets, GPU and CPU)."""
    if device.type == "cpu":
        tune_cpu_allocator()
    return model.to(device, memory_format=torch.channels_last)


PRECISIONS = ("auto", "bf16", "fp32")


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bf16 in hardware (AVX-512 BF16 or AMX), read from its feature flags.

    Without them PyTorch emulates bf16 on the CPU, which is far slower than fp32 (measured on a 2-core
    AVX2 AMD EPYC: EfficientNet-Lite0 inference 2.8 images/s in bf16 against 19 in fp32), so the
    vendor or the core count says nothing: only the flags do. Linux only; elsewhere False (fp32).
    """
    try:
        with open(cpuinfo) as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_native_bf16()


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto" becomes "bf16" where the device runs bf16 natively, else "fp32"; the others stay as asked."""
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def autocast(device: torch.device, precision: str = "auto"):
    """bf16 mixed precision (autocast) when `precision` resolves to "bf16"; plain fp32 otherwise."""
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


# CPU feature flags that decide which kernels (and so which speed and precision) a machine runs.
_CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_facts(cpuinfo: str = "/proc/cpuinfo") -> dict:
    """The CPU precisely (two CPUs sold under one name, e.g. "AMD EPYC", may differ in family, model and
    vector units): model name, vendor, family, model and stepping numbers, and the flags in _CPU_FLAGS.
    Read from /proc/cpuinfo (Linux); elsewhere only the name platform gives."""
    facts = {"cpu": platform.processor() or platform.machine()}
    try:
        with open(cpuinfo) as f:
            fields = {}
            for line in f:
                if not line.strip():
                    break  # the first processor's block describes them all
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        return facts
    flags = set(fields.get("flags", "").split())
    facts.update({
        "cpu": fields.get("model name", facts["cpu"]),
        "cpu_vendor": fields.get("vendor_id"),
        "cpu_family": int(fields["cpu family"]) if fields.get("cpu family", "").isdigit() else None,
        "cpu_model_number": int(fields["model"]) if fields.get("model", "").isdigit() else None,
        "cpu_stepping": int(fields["stepping"]) if fields.get("stepping", "").isdigit() else None,
        "cpu_flags": [flag for flag in _CPU_FLAGS if flag in flags],
    })
    return facts


def machine() -> dict:
    import torchvision

    return {
        **cpu_facts(),
        "cpu_count": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the widest vector ISA PyTorch uses here
        "cpu_native_bf16": cpu_has_native_bf16(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "cifar_tl": __version__,
    }
