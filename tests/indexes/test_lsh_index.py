"""Binary LSH over embeddings: collision maths, exact re-scoring, persistence of the rotation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from reformer_retrieval.indexes import (
    BinaryLSHIndex,
    IndexInputError,
    build_index,
    collision_probability,
    open_index,
)


def _pairs_at_cosine(n: int, dim: int, cosine: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` pairs of unit vectors with exactly the given cosine."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, dim))
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    r = rng.standard_normal((n, dim))
    r -= (r * a).sum(1, keepdims=True) * a
    r /= np.linalg.norm(r, axis=1, keepdims=True)
    b = cosine * a + math.sqrt(1 - cosine**2) * r
    return a.astype(np.float32), b.astype(np.float32)


def test_collision_probability_formula():
    assert collision_probability(1.0) == pytest.approx(1.0)
    # cosine 0 -> p = 1/2 per bit; one table of 16 bits with <= 1 flip matches with 17 / 2**16
    single = 17 / 2**16
    assert collision_probability(0.0, n_tables=1) == pytest.approx(single)
    assert collision_probability(0.0) == pytest.approx(1 - (1 - single) ** 8)
    assert collision_probability(0.9) > collision_probability(0.8) > collision_probability(0.5)


@pytest.mark.parametrize("cosine", [0.8, 0.9])
def test_candidate_rate_matches_collision_probability(cosine):
    dim = 64
    a, b = _pairs_at_cosine(600, dim, cosine, seed=int(cosine * 100))
    index = BinaryLSHIndex(dim, n_tables=4, bits_per_table=8, nflip=1, seed=3)
    index.add(b, list(range(len(b))))
    lims, rows = index.candidates(a)
    found = np.mean([i in rows[lims[i]:lims[i + 1]] for i in range(len(a))])
    expected = collision_probability(cosine, 4, 8, 1)
    # the bits are not independent (orthogonal blocks), so allow a few standard errors plus slack
    assert abs(found - expected) < 0.08, (found, expected)


def test_scores_are_exact_and_near_duplicates_found():
    dim = 48
    rng = np.random.default_rng(0)
    base = rng.standard_normal((500, dim)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    index = build_index("lsh", base, list(range(500)))
    a, b = _pairs_at_cosine(50, dim, 0.97, seed=1)
    index.add(b, list(range(500, 550)))
    res = index.search(a, 3)
    assert np.mean([hits[0] - 500 == i for i, hits in enumerate(res.ids) if hits]) == 1.0
    assert np.mean([len(h) > 0 for h in res.ids]) >= 0.95
    ok = res.rows >= 0
    exact = np.einsum("ij,ij->i", np.repeat(a, 3, axis=0), index.vectors[np.maximum(res.rows, 0).ravel()])
    np.testing.assert_allclose(res.scores[ok], exact.reshape(-1, 3)[ok], atol=1e-6)


def test_rotation_is_seeded_and_saved(tmp_path):
    x = np.random.default_rng(1).standard_normal((100, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    one = BinaryLSHIndex(16, seed=5)
    two = BinaryLSHIndex(16, seed=5)
    other = BinaryLSHIndex(16, seed=6)
    np.testing.assert_array_equal(one.rotation, two.rotation)
    assert not np.array_equal(one.rotation, other.rotation)
    # orthonormal directions within each block of `dim`
    block = one.rotation[:, :16]
    np.testing.assert_allclose(block.T @ block, np.eye(16), atol=1e-5)
    one.add(x, [f"d{i}" for i in range(100)])
    one.save(tmp_path / "lsh")
    back = open_index(tmp_path / "lsh")
    np.testing.assert_array_equal(back.rotation, one.rotation)
    np.testing.assert_array_equal(back.codes(x), one.codes(x))
    assert back.parameters == one.parameters
    assert back.search(x[:5], 2).ids == one.search(x[:5], 2).ids


@pytest.mark.parametrize("nflip", [0, 2])
def test_candidate_rate_matches_the_multiprobe_formula(nflip):
    """FAISS probes the whole Hamming ball of radius nflip: the rate is the binomial sum up to nflip."""
    dim = 64
    a, b = _pairs_at_cosine(800, dim, 0.7, seed=11 + nflip)
    index = BinaryLSHIndex(dim, n_tables=2, bits_per_table=12, nflip=nflip, seed=4)
    index.add(b, list(range(len(b))))
    lims, rows = index.candidates(a)
    found = np.mean([i in rows[lims[i]:lims[i + 1]] for i in range(len(a))])
    expected = collision_probability(0.7, 2, 12, nflip)
    assert abs(found - expected) < 0.06, (found, expected)


def test_threshold_derives_settings_with_empirical_recall():
    """Built for the default dedup cosine 0.41, the index finds >= 97% of pairs at exactly 0.41 (seeded)."""
    dim = 64
    a, b = _pairs_at_cosine(400, dim, 0.41, seed=21)
    index = BinaryLSHIndex(dim, threshold=0.41, seed=2)
    assert index.recall_at(0.41) >= 0.99 and index.n_tables <= 64
    index.add(b, list(range(len(b))))
    lims, rows = index.candidates(a)
    found = np.mean([i in rows[lims[i]:lims[i + 1]] for i in range(len(a))])
    assert found >= 0.97, found
    # through the public range search, a hair below the threshold (float32 rounding of the pair)
    res = index.range_search(a, 0.4099)
    assert np.mean([i in res.ids[i] for i in range(len(a))]) >= 0.97
    # the old default settings reach about 0.06 on the same pairs
    old = BinaryLSHIndex(dim, n_tables=8, bits_per_table=16, nflip=1, seed=2)
    old.add(b, list(range(len(b))))
    lims, rows = old.candidates(a)
    assert np.mean([i in rows[lims[i]:lims[i + 1]] for i in range(len(a))]) < 0.15


def test_short_settings_refused_naming_their_recall():
    with pytest.raises(IndexInputError, match=r"probability 0\.055, below the recall target 0\.99"):
        BinaryLSHIndex(32, n_tables=8, bits_per_table=16, nflip=1, threshold=0.41)
    # the legacy defaults without a threshold: a range search below what they serve is refused
    index = BinaryLSHIndex(32, seed=0)
    x = np.random.default_rng(0).standard_normal((20, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    index.add(x, list(range(20)))
    with pytest.raises(IndexInputError, match=r"cosine 0\.41 with probability 0\.055.*from cosine 0\.936"):
        index.range_search(x[:2], 0.41)
    assert index.range_search(x[:2], 0.95).ids == [[0], [1]]
    # given bits with a threshold: the tables needed are filled in
    fitted = BinaryLSHIndex(32, bits_per_table=16, nflip=1, threshold=0.8)
    assert fitted.recall_at(0.8) >= 0.99


def test_bad_parameters_refused():
    with pytest.raises(IndexInputError, match="multiple of 8"):
        BinaryLSHIndex(16, n_tables=3, bits_per_table=5)
    with pytest.raises(IndexInputError, match="nflip"):
        BinaryLSHIndex(16, nflip=5)
