"""`bf16_autocast`: the one bfloat16 rule of the trainers, with the devices each allows."""

from __future__ import annotations

import torch

from reformer_retrieval.train.precision import CPU_AND_CUDA, CUDA_ONLY, bf16_autocast


def _matmul_dtype(ctx) -> torch.dtype:
    with ctx:
        return (torch.ones(4, 4) @ torch.ones(4, 4)).dtype


def test_cpu_gets_bf16_only_where_the_trainer_allows_it() -> None:
    cpu = torch.device("cpu")
    assert _matmul_dtype(bf16_autocast(cpu, True, CPU_AND_CUDA)) == torch.bfloat16
    assert _matmul_dtype(bf16_autocast(cpu, True, CUDA_ONLY)) == torch.float32
    assert _matmul_dtype(bf16_autocast(cpu, False, CPU_AND_CUDA)) == torch.float32
    assert _matmul_dtype(bf16_autocast(cpu, True)) == torch.float32  # CUDA only by default


def test_cuda_request_builds_a_cuda_autocast_without_a_gpu() -> None:
    ctx = bf16_autocast(torch.device("cuda"), True, CUDA_ONLY)
    assert isinstance(ctx, torch.autocast) and ctx.device == "cuda" and ctx.fast_dtype == torch.bfloat16
    assert not isinstance(bf16_autocast(torch.device("cuda"), True, ("cpu",)), torch.autocast)
