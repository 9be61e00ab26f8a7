"""Fixtures shared across the suite: a tiny saved model and single-threaded torch for tiny workloads."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from reformer_retrieval import ReformerConfig, ReformerEncoder

TINY_CONFIG = ReformerConfig(
    d_model=32, n_layers=2, n_heads=2, d_ff=64, embedding_dim=16, chunk_size=16, max_len=4096, axial_pos_shape=(64, 64)
)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved, randomly initialised tiny encoder (torch seed 0, global RNG left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = ReformerEncoder(TINY_CONFIG)
    return model.save_pretrained(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models run much faster single-threaded, above all on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
