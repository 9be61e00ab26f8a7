"""The warm-up + cosine learning-rate schedule shared by the trainer and distillation."""

import math

import pytest

from reformer_retrieval.train.schedule import warmup_cosine_lr


def test_warmup_then_cosine_to_the_floor() -> None:
    lr = lambda step: warmup_cosine_lr(step, 100, 1e-3, 0.1, 0.05)  # noqa: E731
    assert lr(0) == pytest.approx(1e-4) and lr(9) == pytest.approx(1e-3)  # 10 warm-up steps
    assert lr(10) == pytest.approx(1e-3)
    assert lr(55) == pytest.approx(1e-3 * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * 0.5))))
    assert lr(100) == pytest.approx(5e-5) and lr(500) == pytest.approx(5e-5)
    assert warmup_cosine_lr(0, 10, 1.0, 0.0, 0.0) == 1.0  # at least one warm-up step
