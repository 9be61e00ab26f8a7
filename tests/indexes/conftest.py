"""Shared fixtures for the index tests: seeded random unit vectors, one FAISS thread."""

from __future__ import annotations

import numpy as np
import pytest
from reformer_retrieval.indexes import set_threads


@pytest.fixture(autouse=True)
def _one_faiss_thread():
    """Tiny searches on a shared 2-core machine are fastest (and least noisy) on one OpenMP thread."""
    before = set_threads(None)
    set_threads(1)
    yield
    set_threads(before)


def unit_vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """``n`` seeded random unit vectors of width ``dim`` (float32)."""
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered_vectors(n: int, dim: int, n_centres: int = 50, noise: float = 0.35, seed: int = 0) -> np.ndarray:
    """Unit vectors around ``n_centres`` random centres (neighbour structure like real embeddings)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_centres, dim))
    x = centres[rng.integers(0, n_centres, n)] + noise * rng.standard_normal((n, dim))
    x = x.astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def vectors() -> np.ndarray:
    return unit_vectors(400, 32, seed=0)
