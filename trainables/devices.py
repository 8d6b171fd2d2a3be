"""Where a run computes and in which precision: the device, CPU threads, bf16 autocast."""

from __future__ import annotations

import functools
import os
import warnings

import torch

from trainables.errors import ConfigError


def pick_device(requested: str) -> torch.device:
    """CUDA when asked for or, under ``auto``, when one is visible; otherwise the CPU."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("training.device is cuda but no GPU is visible to this process")
    if requested != "cpu" and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def use_cpu_threads(cpus: int | None) -> int:
    """Set torch's intra-op threads to the CPUs the run holds (default: those this process may run on)."""
    threads = cpus or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    return threads


def has_native_bf16(device: torch.device) -> bool:
    """bf16 in hardware: a CUDA GPU from Ampere on, a CPU with AMX or AVX512-BF16. Elsewhere autocast emulates
    it: a MiniLM-L6 step took 15 × as long as in float32 on an AVX2-only EPYC (benchmarks/cpu_attention.py)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()


def mixed_precision(precision: str, device: torch.device):
    """The run's ``torch.autocast``: bf16 when asked, or under ``auto`` where the hardware has it; else float32."""
    native = has_native_bf16(device)
    bf16 = precision == "bf16" or (precision == "auto" and native)
    if bf16 and not native:
        warnings.warn(f"training.precision is bf16 but this {device.type} has no native bf16: autocast emulates "
                      "it and a step can take many times longer than in float32; use precision auto or fp32",
                      stacklevel=2)
    return functools.partial(torch.autocast, device_type=device.type, dtype=torch.bfloat16, enabled=bf16)
