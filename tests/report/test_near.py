"""Pairs just below the threshold: cosine (sampled x all) and Jaccard (LSH over a sample, exact scores)."""

from __future__ import annotations

import numpy as np

from reformer_retrieval.report.near import cosine_below, jaccard_below, sample_rows


def test_cosine_below_finds_the_band_only():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 32)).astype(np.float32)
    x[1] = x[0] * 0.85 + np.sqrt(1 - 0.85**2) * np.linalg.norm(x[0]) * np.eye(32)[5]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x[2] = x[3]  # cosine 1.0: above the band
    near = cosine_below(x, threshold=0.9, band=0.1)
    pairs = set(zip(near.rows_a.tolist(), near.rows_b.tolist()))
    assert (0, 1) in pairs and (2, 3) not in pairs
    assert ((near.scores >= 0.8) & (near.scores < 0.9)).all()
    assert near.sampled_docs == 50
    assert cosine_below(x, 0.9, sample=10, seed=3).sampled_docs == 10


def test_jaccard_below_scores_exactly():
    words = [f"w{i}" for i in range(40)]
    a = " ".join(words)
    b = " ".join(words[:30] + [f"x{i}" for i in range(10)])  # 2-gram Jaccard 29 / 49 = 0.59
    c = " ".join(f"z{i}" for i in range(40))
    near = jaccard_below(np.array([4, 7, 9]), [a, b, c], threshold=0.65, band=0.2)
    assert list(zip(near.rows_a.tolist(), near.rows_b.tolist())) == [(4, 7)]
    assert abs(near.scores[0] - 29 / 49) < 1e-9
    assert len(jaccard_below(np.array([4, 7]), [a, b], threshold=0.5, band=0.1).scores) == 0  # above


def test_sample_rows_is_seeded():
    assert sample_rows(5, 10, 0).tolist() == [0, 1, 2, 3, 4]
    assert sample_rows(1000, 10, 1).tolist() == sample_rows(1000, 10, 1).tolist()
    assert len(set(sample_rows(1000, 10, 1).tolist())) == 10
