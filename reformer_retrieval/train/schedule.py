"""The learning-rate schedule of every training loop: linear warm-up, then cosine decay to a floor."""

from __future__ import annotations

import math

__all__ = ["warmup_cosine_lr"]


def warmup_cosine_lr(step: int, steps: int, lr: float, warmup: float, min_lr_ratio: float) -> float:
    """Learning rate of ``step`` of ``steps``: linear warm-up over ``round(warmup * steps)`` steps (at least 1),
    then cosine decay from ``lr`` to ``lr * min_lr_ratio`` at the last step."""
    warm = max(1, round(warmup * steps))
    if step < warm:
        return lr * (step + 1) / warm
    progress = min(1.0, (step - warm) / max(1, steps - warm))
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
