"""Candidate pairs just below a run's threshold, which ``pairs.parquet`` does not hold.

``pairs.parquet`` keeps the verified pairs (score >= threshold); judging a threshold also needs the pairs
that just missed it. They are found again here, on a seeded sample of documents:

* cosine: every sampled document against all documents of the run's ``embeddings.parquet`` (exact
  inner products, in chunks), keeping pairs with ``threshold - band <= cosine < threshold``;
* Jaccard: MinHash LSH tuned for ``threshold - band`` over the sampled documents' texts (the run's
  MinHash settings), each candidate's Jaccard computed exactly, keeping those in the band.

The pairs above the threshold come from ``pairs.parquet`` itself (all of them); the pairs below are a
sample, and the page says how many documents were sampled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["NearPairs", "cosine_below", "jaccard_below", "sample_rows"]


@dataclass
class NearPairs:
    """Pairs below a threshold: rows into the run's ids, exact scores, and how many documents were sampled."""

    kind: str
    rows_a: np.ndarray
    rows_b: np.ndarray
    scores: np.ndarray
    sampled_docs: int

    @classmethod
    def empty(cls, kind: str) -> NearPairs:
        """No pairs (nothing to sample from)."""
        z = np.zeros(0, np.int64)
        return cls(kind, z, z, np.zeros(0), 0)


def sample_rows(n: int, size: int, seed: int) -> np.ndarray:
    """``size`` rows of ``n`` drawn without replacement with ``seed`` (all rows when ``n <= size``), sorted."""
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


def _cap(a: np.ndarray, b: np.ndarray, s: np.ndarray, max_pairs: int, seed: int) -> tuple[np.ndarray, ...]:
    if len(s) <= max_pairs:
        return a, b, s
    keep = np.sort(np.random.default_rng(seed + 1).choice(len(s), max_pairs, replace=False))
    return a[keep], b[keep], s[keep]


def cosine_below(
    vectors: np.ndarray, threshold: float, band: float = 0.1, sample: int = 2000, max_pairs: int = 50_000,
    seed: int = 0, chunk: int = 256,
) -> NearPairs:
    """Pairs with ``threshold - band <= cosine < threshold`` among ``sample`` documents x all documents.

    Args:
        vectors: Unit vectors of every document (run order).
        threshold: The run's cosine threshold.
        band: Width of the band below the threshold.
        sample: Documents sampled (seeded) as one side of the pairs; all when there are fewer.
        max_pairs: At most this many pairs are kept (a seeded uniform subsample).
        seed: Seed of both samples.
        chunk: Sampled documents per matrix product.
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    rows = sample_rows(len(vectors), sample, seed)
    found_a, found_b, found_s = [], [], []
    lo = np.float32(threshold - band)
    for s in range(0, len(rows), chunk):
        q = rows[s:s + chunk]
        sims = vectors[q] @ vectors.T
        qi, j = np.nonzero((sims >= lo) & (sims < np.float32(threshold)))
        a, b = q[qi], j
        keep = a != b
        found_a.append(np.minimum(a, b)[keep])
        found_b.append(np.maximum(a, b)[keep])
        found_s.append(sims[qi, j][keep])
    if not found_a:
        return NearPairs.empty("cosine")
    a, b, sc = np.concatenate(found_a), np.concatenate(found_b), np.concatenate(found_s).astype(np.float64)
    _, first = np.unique(np.stack([a, b], 1), axis=0, return_index=True)  # a pair met from both ends once
    a, b, sc = _cap(a[first], b[first], sc[first], max_pairs, seed)
    return NearPairs("cosine", a.astype(np.int64), b.astype(np.int64), sc, len(rows))


def jaccard_below(
    rows: np.ndarray, texts: Sequence[str], threshold: float, band: float = 0.1, max_pairs: int = 50_000,
    seed: int = 0, minhash: dict[str, Any] | None = None,
) -> NearPairs:
    """Pairs with ``threshold - band <= Jaccard < threshold`` among sampled documents (LSH, then exact).

    Args:
        rows: Rows of the sampled documents (`sample_rows`).
        texts: Their texts, in the same order.
        threshold: The run's Jaccard threshold.
        band: Width of the band below the threshold.
        max_pairs: At most this many pairs are kept (a seeded uniform subsample).
        seed: Seed of that subsample.
        minhash: The run's MinHash settings (``num_perm``, ``shingle``, ``ngram``; summary.json "minhash").
    """
    from reformer_retrieval.indexes.minhash import MinHashIndex, jaccard

    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) != len(texts):
        raise ValueError(f"{len(rows)} rows but {len(texts)} texts")
    if len(rows) < 2:
        return NearPairs.empty("jaccard")
    settings = {k: v for k, v in (minhash or {}).items() if k in ("num_perm", "shingle", "ngram")}
    low = max(0.02, threshold - band)
    index = MinHashIndex(threshold=low, **settings)
    index.add(list(texts), list(range(len(rows))))
    cand = index.candidate_pairs()
    if not len(cand):
        return NearPairs("jaccard", np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), len(rows))
    shingler = index.shingler
    sets: dict[int, np.ndarray] = {}

    def shingles(i: int) -> np.ndarray:
        if i not in sets:
            sets[i] = shingler.shingles(texts[i])
        return sets[i]

    scores = np.fromiter((jaccard(shingles(a), shingles(b)) for a, b in cand.tolist()), np.float64, len(cand))
    ok = (scores >= low) & (scores < threshold)
    a, b, sc = _cap(rows[cand[ok, 0]], rows[cand[ok, 1]], scores[ok], max_pairs, seed)
    return NearPairs("jaccard", np.minimum(a, b), np.maximum(a, b), sc, len(rows))
