"""Batch building in worker processes, ahead of the training step.

Batches are a pure function of ``(seed, step)``, so building them in other processes changes nothing but
speed. Workers are forked before CUDA starts (they only run NumPy and string code) and get the builder by
inheritance, so the corpus is not copied through pipes.
"""

from __future__ import annotations

import multiprocessing as mp
from typing import Any

import numpy as np

from reformer_retrieval.train.augment import PRESETS
from reformer_retrieval.train.data import BatchBuilder, PairBatch

__all__ = ["Prefetcher", "augment_one"]

_WORKER_BUILDER: BatchBuilder | None = None


def augment_one(text: str, preset: str, strength: float, seed: tuple[int, ...]) -> str:
    """``PRESETS[preset]`` applied to ``text`` with a generator seeded by ``seed`` (a picklable job)."""
    return PRESETS[preset].apply(text, np.random.default_rng(list(seed)), strength)


def _set_builder(builder: BatchBuilder) -> None:
    global _WORKER_BUILDER
    _WORKER_BUILDER = builder


def _worker_build(step: int, total_steps: int) -> PairBatch:
    assert _WORKER_BUILDER is not None
    _WORKER_BUILDER.total_steps = total_steps
    return _WORKER_BUILDER.build(step)


class Prefetcher:
    """Builds upcoming batches in worker processes (or inline with ``workers == 0``), in step order."""

    def __init__(self, builder: BatchBuilder, workers: int, depth: int) -> None:
        global _WORKER_BUILDER
        self.builder = builder
        self.depth = max(1, depth)
        self.pending: dict[int, Any] = {}
        self.pool = None
        if workers > 0:
            _WORKER_BUILDER = builder
            if "fork" in mp.get_all_start_methods():  # children inherit the builder: no copy through pipes
                self.pool = mp.get_context("fork").Pool(workers)
            else:  # e.g. Windows: each worker receives the builder once
                self.pool = mp.get_context("spawn").Pool(workers, initializer=_set_builder, initargs=(builder,))

    def get(self, step: int, last_step: int) -> PairBatch:
        """The batch of ``step``; queues the following ones (up to ``last_step``) in the workers."""
        total = self.builder.total_steps
        if self.pool is None:
            return self.builder.build(step)
        for s in range(step, min(last_step, step + self.depth)):
            if s not in self.pending:
                self.pending[s] = self.pool.apply_async(_worker_build, (s, total))
        for s in [s for s in self.pending if s < step]:
            del self.pending[s]
        return self.pending.pop(step).get()

    def close(self) -> None:
        """Stop the worker processes."""
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None


