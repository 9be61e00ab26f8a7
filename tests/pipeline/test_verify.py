"""Vectorised verification: exact Jaccard equals the per-pair reference; verdicts as find_duplicates."""

from __future__ import annotations

import numpy as np
from reformer_retrieval.indexes.minhash import jaccard

from reformer_retrieval.pipeline.verify import exact_jaccard, pair_verdicts


def test_exact_jaccard_matches_the_reference_in_small_chunks():
    rng = np.random.default_rng(0)
    sets = [np.unique(rng.integers(0, 60, size=int(rng.integers(0, 40))).astype(np.uint64)) for _ in range(200)]
    sets[3] = np.zeros(0, np.uint64)  # an empty set: Jaccard 0
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in sets])])
    values = np.concatenate(sets)
    a = rng.integers(0, 200, size=1000)
    b = rng.integers(0, 200, size=1000)
    a[:5] = 3
    want = np.array([jaccard(sets[i], sets[j]) for i, j in zip(a, b)])
    for chunk in (1 << 23, 50):  # one chunk, and many
        got = exact_jaccard(values, offsets, a, b, chunk_elements=chunk)
        np.testing.assert_array_equal(got, want)


def test_pair_verdicts():
    cos = np.array([0.99, 0.5, np.nan, 0.96], np.float32)
    jac = np.array([np.nan, 0.6, 0.1, 0.7], np.float32)
    keep, score, method = pair_verdicts(cos, jac, 0.95, 0.5)
    assert keep.tolist() == [True, True, False, True]
    assert method == ["embedding", "minhash", "minhash", "embedding+minhash"]
    np.testing.assert_allclose(score[[0, 1, 3]], [0.99, 0.6, 0.96], rtol=1e-6)
