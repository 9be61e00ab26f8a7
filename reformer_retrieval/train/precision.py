"""Mixed precision for the trainers: one bfloat16 autocast rule, with the devices each trainer allows.

The main trainer (`trainer.Trainer`) and distillation (`distill`) use bf16 on CUDA only; their CPU path stays
float32 bit for bit (their tests pin it), because CPUs without bf16 units emulate it slowly. The
window-identity trainer (`window_identity`) allows the CPU too (default off), for CPUs with AMX bf16 units.
Bucket decisions stay float32 under autocast whatever the trainer (`LSHSelfAttention.compute_buckets`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

import torch

__all__ = ["CPU_AND_CUDA", "CUDA_ONLY", "bf16_autocast"]

CUDA_ONLY: tuple[str, ...] = ("cuda",)
CPU_AND_CUDA: tuple[str, ...] = ("cpu", "cuda")


def bf16_autocast(
    device: torch.device, enabled: bool, devices: Iterable[str] = CUDA_ONLY
) -> contextlib.AbstractContextManager[Any]:
    """bfloat16 autocast on ``device`` when ``enabled`` and its type is one of ``devices``; nothing otherwise."""
    if enabled and device.type in tuple(devices):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
