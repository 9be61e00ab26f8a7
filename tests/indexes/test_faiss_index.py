"""Flat, HNSW and IVF-PQ backends: round trips, score semantics, removal, recall against exact."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import faiss
import numpy as np
import pytest
from reformer_retrieval.indexes import (
    FlatIndex,
    HNSWIndex,
    IndexInputError,
    IVFPQIndex,
    build_index,
    open_index,
    set_threads,
)

_conftest = importlib.util.spec_from_file_location("_idx_conftest", Path(__file__).with_name("conftest.py"))
_helpers = importlib.util.module_from_spec(_conftest)
_conftest.loader.exec_module(_helpers)
unit_vectors = _helpers.unit_vectors
clustered_vectors = _helpers.clustered_vectors

KINDS = ["flat", "hnsw", "ivfpq", "lsh"]


def _params(kind: str) -> dict:
    """IVF-PQ with 5-bit codes: the tests' 1,500+ vectors are enough to train them (39 x 32 = 1,248)."""
    return {"nbits": 5} if kind == "ivfpq" else {}


def _exact_topk(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize("kind", KINDS)
def test_add_search_save_load_round_trip(kind, tmp_path):
    x = unit_vectors(3000, 32, seed=1)
    ids = [f"doc-{i}" for i in range(len(x))]
    index = build_index(kind, x, ids, model_id="m0", **_params(kind))
    q = x[:20]
    before = index.search(q, 5)
    assert before.scores.shape == (20, 5) and before.rows.shape == (20, 5)
    # a document's own vector is its best hit (IVF-PQ's scores are approximate, but on random data
    # the own vector still stands out)
    assert all(hits[0] == ids[i] for i, hits in enumerate(before.ids))
    assert np.all(np.diff(before.scores, axis=1) <= 1e-6), "hits must be sorted best first"
    path = index.save(tmp_path / "idx")
    again = open_index(path, expect_model_id="m0", expect_dim=32)
    assert type(again) is type(index)
    assert again.count == len(x) and again.ids[:3] == ids[:3]
    after = again.search(q, 5)
    assert after.ids == before.ids
    np.testing.assert_allclose(after.scores, before.scores, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_add_to_loaded_index_and_integer_ids(kind, tmp_path):
    x = unit_vectors(2000, 16, seed=2)
    index = build_index(kind, x[:1500], list(range(1500)), model_id="m", **_params(kind))
    index.save(tmp_path / "i")
    loaded = open_index(tmp_path / "i")
    loaded.add(x[1500:], list(range(1500, 2000)))
    loaded.save(tmp_path / "i", overwrite=True)
    final = open_index(tmp_path / "i")
    assert final.count == 2000
    res = final.search(x[1990:2000], 5)
    hit_rate = np.mean([(1990 + i) in (hits if kind == "ivfpq" else hits[:1]) for i, hits in enumerate(res.ids)])
    assert hit_rate >= (0.8 if kind == "ivfpq" else 1.0)
    assert all(isinstance(h, int) for hits in res.ids for h in hits)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "lsh"])
def test_range_search_keeps_scores_at_or_above_threshold(kind):
    x = unit_vectors(300, 24, seed=3)
    # make exact duplicates and near-duplicates at known cosines
    x[1] = x[0]
    y = x[0] + 0.2 * x[2]
    x[3] = y / np.linalg.norm(y)
    index = build_index(kind, x, [f"d{i}" for i in range(300)])
    # exactly the score the index gives d3 (floating-point rounding differs between backends):
    # it must be included (>=)
    top = index.search(x[:1], 3)
    threshold = float(top.scores[0][top.ids[0].index("d3")])
    assert threshold == pytest.approx(float(x[0] @ x[3]), abs=1e-6)
    res = index.range_search(x[:1], threshold)
    got = res.ids[0]
    assert set(got) == {"d0", "d1", "d3"}
    assert np.all(res.scores >= np.float32(threshold))
    assert np.all(np.diff(res.scores) <= 0), "sorted best first"
    # just above it, d3 drops out
    res2 = index.range_search(x[:1], float(np.nextafter(np.float32(threshold), np.float32(2))))
    assert "d3" not in res2.ids[0]


def test_range_search_matches_brute_force_on_flat(vectors):
    index = build_index("flat", vectors, list(range(len(vectors))))
    q = vectors[:50]
    res = index.range_search(q, 0.3)
    sims = q @ vectors.T
    for i in range(50):
        expected = set(np.nonzero(sims[i] >= np.float32(0.3))[0].tolist())
        assert set(res.ids[i]) == expected


def _recall(kind: str, x: np.ndarray, q: np.ndarray, k: int, **params) -> float:
    exact = _exact_topk(x, q, k)
    index = build_index(kind, x, list(range(len(x))), **params)
    got = index.search(q, k).rows
    return float(np.mean([len(set(exact[i]) & set(got[i])) / k for i in range(len(q))]))


def test_hnsw_recall_against_exact():
    x = unit_vectors(5000, 32, seed=4)
    q = unit_vectors(100, 32, seed=5)
    assert _recall("hnsw", x, q, 10, m=16, ef_search=128) >= 0.95


def test_ivfpq_recall_against_exact_and_nprobe_matters():
    x = clustered_vectors(4000, 32, n_centres=40, noise=0.5, seed=6)
    q = x[:100] + 0.05 * unit_vectors(100, 32, seed=7)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    exact = _exact_topk(x, q, 10)
    index = build_index("ivfpq", x, list(range(len(x))), m=16, nbits=6)

    def recall(nprobe: int) -> float:
        index.nprobe = nprobe
        got = index.search(q, 10).rows
        return float(np.mean([len(set(exact[i]) & set(got[i])) / 10 for i in range(len(q))]))

    low, high = recall(1), recall(index.nlist)
    assert high >= 0.6, high
    assert high > low


def test_ivfpq_refuses_too_small_a_training_set():
    """Below FAISS's 39 points per centroid IVF-PQ is refused, not quietly built with fewer bits / lists."""
    x = clustered_vectors(2000, 16, seed=12)
    with pytest.raises(IndexInputError, match=r"nbits=8 needs at least 9,984 training vectors.*got 2,000.*nbits=5 fits"):
        build_index("ivfpq", x, list(range(2000)))
    with pytest.raises(IndexInputError, match=r"nbits=4 and nlist=100 needs at least 3,900"):
        build_index("ivfpq", x, list(range(2000)), nbits=4, nlist=100)
    index = build_index("ivfpq", x, list(range(2000)), nbits=5, nlist=40)
    assert (index.nbits, index.nlist) == (5, 40) and index.index.pq.nbits == 5 and index.index.nlist == 40
    # a small first add after training on a sample large enough: nothing shrinks
    trained = IVFPQIndex(16, nbits=5)
    trained.train(x)
    trained.add(x[:50], list(range(50)))
    assert trained.index.pq.nbits == 5 and trained.nlist == 45  # about sqrt(2000), under 2000 // 39 = 51
    assert trained.search(x[:5], 1).ids == [[0], [1], [2], [3], [4]]


def test_ivfpq_nprobe_settable_and_saved(tmp_path):
    x = clustered_vectors(3000, 16, seed=8)
    index = build_index("ivfpq", x, list(range(3000)), nprobe=4, nbits=6)
    index.nprobe = 9
    assert index.index.nprobe == 9
    index.save(tmp_path / "i")
    assert open_index(tmp_path / "i").nprobe == 9
    with pytest.raises(IndexInputError):
        index.nprobe = 0


@pytest.mark.parametrize("kind", KINDS)
def test_remove_hides_ids_and_survives_save(kind, tmp_path):
    x = clustered_vectors(2000, 16, seed=9)
    ids = [f"d{i}" for i in range(2000)]
    index = build_index(kind, x, ids, **_params(kind))
    assert index.remove(["d0", "d5"]) == 2
    assert index.count == 1998 and "d0" not in index and "d1" in index
    res = index.search(x[[0, 5]], 10)
    assert all("d0" not in h and "d5" not in h for h in res.ids)
    rr = index.range_search(x[[0]], 0.95)  # d0 would score 1.0 (an LSH index serves >= 0.936 with recall 0.99)
    assert "d0" not in rr.ids[0] and "d1" not in rr.ids[0]  # d1 is not a near-duplicate of d0
    assert "d1" in index.range_search(x[[1]], 0.95).ids[0]
    index.save(tmp_path / "i")
    back = open_index(tmp_path / "i")
    assert back.count == 1998 and "d0" not in back
    assert all("d0" not in h for h in back.search(x[[0]], 10).ids)
    with pytest.raises(IndexInputError, match="'d0' is not in the index"):
        back.remove(["d0"])
    # re-adding a removed id is allowed (new row)
    back.add(x[[0]], ["d0"])
    if kind == "ivfpq":  # PQ scores are approximate: d0 is among the best few, scored as its decoded code
        hits = back.search(x[[0]], 5)
        assert "d0" in hits.ids[0]
        decoded = back.reconstruct(["d0"])[0]
        assert abs(hits.scores[0][hits.ids[0].index("d0")] - float(x[0] @ decoded)) < 1e-4
    else:
        assert back.search(x[[0]], 1).ids[0][0] == "d0"


def test_search_exclude_self_and_short_results():
    x = unit_vectors(5, 8, seed=10)
    index = build_index("flat", x, ["a", "b", "c", "d", "e"])
    res = index.search(x[:2], 10, exclude=["a", "b"])
    assert res.ids[0][0] != "a" and "a" not in res.ids[0] and len(res.ids[0]) == 4
    assert res.rows.shape == (2, 10) and (res.rows[:, 4:] == -1).all() and np.isneginf(res.scores[:, 4:]).all()


@pytest.mark.parametrize("kind", KINDS)
def test_reconstruct(kind):
    x = clustered_vectors(2000, 16, seed=11)
    index = build_index(kind, x, list(range(2000)), **_params(kind))
    rec = index.reconstruct([3, 7])
    assert rec.shape == (2, 16)
    if kind != "ivfpq":
        np.testing.assert_allclose(rec, x[[3, 7]], atol=1e-6)
    else:
        assert np.all(np.einsum("ij,ij->i", rec, x[[3, 7]]) > 0.8)


def test_bad_input_is_refused():
    x = unit_vectors(10, 8)
    index = FlatIndex(8)
    with pytest.raises(IndexInputError, match=r"shape \(10, 8\).*\(n, 4\)"):
        FlatIndex(4).add(x, list(range(10)))
    with pytest.raises(IndexInputError, match="norm"):
        index.add(x * 3, list(range(10)))
    with pytest.raises(IndexInputError, match="appears twice"):
        index.add(x[:2], ["a", "a"])
    index.add(x[:2], ["a", "b"])
    with pytest.raises(IndexInputError, match="already in the index"):
        index.add(x[2:3], ["a"])
    with pytest.raises(IndexInputError, match="holds string ids"):
        index.add(x[2:3], [5])
    with pytest.raises(IndexInputError, match="mix"):
        FlatIndex(8).add(x[:2], ["a", 1])
    bad = x[:1].copy()
    bad[0, 0] = np.nan
    with pytest.raises(IndexInputError, match="row 0 holds NaN"):
        index.add(bad, ["z"])


def test_slightly_off_unit_rows_are_renormalised():
    x = unit_vectors(4, 8) * np.float32(1.004)  # bfloat16-like rounding of the norm
    index = build_index("flat", x, list(range(4)))
    assert index.search(x[:1] / 1.004, 1).scores[0, 0] == pytest.approx(1.0, abs=1e-5)


def test_hnsw_uses_inner_product():
    index = HNSWIndex(8)
    assert index.index.metric_type == faiss.METRIC_INNER_PRODUCT
    assert IVFPQIndex(8, m=2).m == 2


def test_set_threads():
    before = set_threads(None)
    assert set_threads(1) == 1
    set_threads(before)
    with pytest.raises(ValueError):
        set_threads(-2)


def test_hnsw_removal_after_a_search_is_honoured():
    """The cached tombstone selector is rebuilt after every removal."""
    x = clustered_vectors(500, 16, seed=3)
    index = build_index("hnsw", x, [f"d{i}" for i in range(500)])
    index.remove(["d0"])
    assert "d0" not in index.search(x[[0, 1]], 5).ids[0]
    index.remove(["d1"])
    res = index.search(x[[0, 1]], 5)
    assert all("d0" not in h and "d1" not in h for h in res.ids)
    assert "d1" not in index.range_search(x[[1]], -1.0).ids[0]
