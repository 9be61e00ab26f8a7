"""The chunked attention's training path compiled by inductor (opt-in, for bf16 training on the CPU).

With gradients, the chunked attention runs its masked slot math under autograd (or, in fp32 on the CPU,
PyTorch's fused kernel): per window slot a handful of elementwise passes over (M, c, c) score blocks, plus the
sort, padding, un-sort and round combination around them, each a separate memory pass. `torch.compile` of
`chunked_attention_combined` fuses those passes (forward and backward, through AOTAutograd) and leaves the
products to the BLAS. Measured on this project's 2-core CPU (docs/benchmarks.md, "Compiled training path"):
under bf16 autocast the 16K-token training step is 1.45x the eager bf16 step on the benchmark shape and
1.29x on the default model's shape (4 x 4,096 tokens), and fp32 gains nothing (its step is bound by the fp32
products), so it is worth switching on with bf16 only (nothing enforces that).

Only the training forward is compiled (gradients on, module in training mode, no attention dropout): the
no-grad forward of the reversible stack and all inference keep the fused eager kernel (so with the
reversible stack only the backward's recomputation runs compiled). One graph per input shape
(``dynamic=False``), about 37 s at 16K tokens on 2 cores with a cold inductor cache, 15 s with a warm one: it
pays where shapes repeat. In the window-identity trainer, whose OCR-noised crops change the padded length at
almost every step, 14 steps of the shipped config took 272 s compiled against 151 s eager (even with lengths
padded to steps of 1,024 tokens), so no trainer switches it on. Where compiling fails (no C++ compiler, an
unsupported device) the first failure is logged in one line and the eager path runs for the rest of the
process. The compiled path computes the same math as the eager slot path
(tests/model/test_compiled_training.py).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import torch

from reformer_retrieval.model.chunked_attention import chunked_attention_combined
from reformer_retrieval.model.compile_fallback import (
    compile_available,
    raise_recompile_limit,
    record_compile_failure,
)

__all__ = ["compile_failed", "compiled_available", "compiled_chunked_attention"]

log = logging.getLogger(__name__)

_STATE: dict[str, object] = {}
_RECOMPILE_LIMIT = 64
"""Graphs dynamo keeps per function before it silently runs the rest eagerly (one per input shape)."""


@functools.cache
def compiled_chunked_attention() -> Callable[..., Any]:
    """`chunked_attention_combined` compiled by inductor, one graph per input shape."""
    raise_recompile_limit(_RECOMPILE_LIMIT)
    return torch.compile(chunked_attention_combined, dynamic=False)


def compiled_available(device: torch.device | str) -> bool:
    """Whether to try the compiled path on ``device``: not after a failed compile there in this process, nor
    with ``REFORMER_NO_COMPILE=1`` in the environment."""
    return compile_available(_STATE, "REFORMER_NO_COMPILE", device)


def compile_failed(device: torch.device | str, exc: BaseException) -> None:
    """Record that compiling failed on ``device`` and log one line (the first time); the eager path runs on."""
    record_compile_failure(_STATE, device, exc, log,
                           "the compiled attention cannot run on %s (%s: %s); using the eager path")
