"""Stage ``verify``: candidate edges -> verified pairs (exact cosine and / or exact Jaccard), vectorised.

The same tests as `reformer_retrieval.dedup.find_duplicates`, so kept pairs and scores match it:

* cosine: the float32 dot product of the two stored unit vectors, kept if ``>= threshold``;
* Jaccard: exact, of the two sorted shingle sets, computed only for pairs whose MinHash estimate (share of
  equal signature entries) is at least ``threshold - max(0.1, 2.5 / sqrt(num_perm))``, kept if ``>= threshold``;
* hybrid: both are computed, a pair passes if either test does; ``score`` is the cosine when the embedding
  test passed, else the Jaccard; ``method`` names the tests that passed.

`exact_jaccard` intersects many pairs of sets at once: the two sets of every pair are laid side by side,
tagged with the pair's number, sorted together, and equal neighbours with the same tag are counted, with
no Python loop per pair.

The features of both ends of each edge are joined shard by shard, in two stages: ``verify-a`` task ``i``
takes the edges whose smaller row ``a`` lies in read shard ``i`` (the candidates are partitioned that way),
reads feature shard ``i`` once and writes each edge with ``a``'s features, partitioned by the read shard of
``b``; ``verify`` task ``j`` reads the edges whose ``b`` lies in shard ``j``, reads feature shard ``j`` once,
and runs the tests. Every task reads one feature shard, whatever the corpus size.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from reformer_retrieval.dedup import minhash_margin
from reformer_retrieval.pipeline.runner import ShardTask, shard_path
from reformer_retrieval.pipeline.sketch import to_matrix

__all__ = ["VerifyHalfTask", "VerifyTask", "exact_jaccard", "minhash_margin", "pair_verdicts"]

_LABELS = np.array(["minhash", "embedding", "minhash", "embedding+minhash"])

COSINE_CHUNK = 65_536
"""Edges whose cosine ``verify`` computes at once (bounds the task's copies of the vectors)."""


def exact_jaccard(values: np.ndarray, offsets: np.ndarray, a: np.ndarray, b: np.ndarray,
                  chunk_elements: int = 1 << 23) -> np.ndarray:
    """Exact Jaccard (float64) of sets ``a[k]`` and ``b[k]``; set ``i`` is ``values[offsets[i]:offsets[i+1]]``.

    Sets must be sorted and unique (as `Shingler.shingles` makes them); an empty set gives 0. Pairs are
    processed in chunks of about ``chunk_elements`` set elements to bound the memory.
    """
    a = np.asarray(a, np.int64)
    b = np.asarray(b, np.int64)
    lengths = np.diff(offsets)
    la, lb = lengths[a], lengths[b]
    out = np.zeros(len(a), np.float64)
    ends = np.cumsum(la + lb)  # chunk boundaries: where the running element count crosses a multiple
    cuts = np.searchsorted(ends, np.arange(chunk_elements, int(ends[-1]) if len(ends) else 0, chunk_elements))
    bounds = np.unique(np.concatenate([[0], cuts + 1, [len(a)]])).clip(0, len(a))
    bounds = np.unique(bounds).tolist()
    for lo, hi in itertools.pairwise(bounds):
        out[lo:hi] = _jaccard_chunk(values, offsets, a[lo:hi], b[lo:hi], la[lo:hi], lb[lo:hi])
    return out


def _gather(values: np.ndarray, offsets: np.ndarray, sets: np.ndarray, lens: np.ndarray) -> np.ndarray:
    total = int(lens.sum())
    if total == 0:
        return np.zeros(0, values.dtype)
    starts = np.repeat(offsets[sets], lens)
    within = np.arange(total) - np.repeat(np.cumsum(lens) - lens, lens)
    return values[starts + within]


def _jaccard_chunk(values: np.ndarray, offsets: np.ndarray, a: np.ndarray, b: np.ndarray,
                   la: np.ndarray, lb: np.ndarray) -> np.ndarray:
    k = np.arange(len(a))
    tags = np.concatenate([np.repeat(k, la), np.repeat(k, lb)])
    vals = np.concatenate([_gather(values, offsets, a, la), _gather(values, offsets, b, lb)])
    order = np.lexsort((vals, tags))
    t, v = tags[order], vals[order]
    same = (t[1:] == t[:-1]) & (v[1:] == v[:-1])  # each set is unique: a repeat is one shared element
    inter = np.bincount(t[1:][same], minlength=len(a)).astype(np.float64)
    union = (la + lb).astype(np.float64) - inter
    return np.where((la == 0) | (lb == 0), 0.0, inter / np.maximum(union, 1.0))


def pair_verdicts(cos: np.ndarray, jac: np.ndarray, cosine_t: float | None,
                  jaccard_t: float | None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(keep, score, method)`` of pairs with scores ``cos`` / ``jac`` (NaN = not computed)."""
    pass_emb = cos >= np.float32(cosine_t) if cosine_t is not None else np.zeros(len(cos), bool)
    pass_lex = (np.nan_to_num(jac, nan=-1.0) >= np.float32(jaccard_t) if jaccard_t is not None
                else np.zeros(len(cos), bool))
    keep = pass_emb | pass_lex
    score = np.where(pass_emb, cos, jac).astype(np.float32)
    method = _LABELS[pass_emb.astype(int) + 2 * pass_lex.astype(int)]
    return keep, score, method.tolist()


def _shard_features(stage_dir: str, shard: int, rows: np.ndarray, columns: list[str]) -> pa.Table:
    """``columns`` of feature shard ``shard`` at ``rows`` (in that order; every row must be there)."""
    t = pq.read_table(shard_path(stage_dir, shard), columns=["row", *columns])
    have = t.column("row").to_numpy()
    pos = np.searchsorted(have, rows)
    if len(rows) and (pos.max() >= len(have) or not np.array_equal(have[pos], rows)):
        raise RuntimeError(f"{shard_path(stage_dir, shard)}: lacks rows the candidates name")
    return t.select(columns).take(pa.array(pos, pa.int64()))


class _Features:
    """Which feature columns the tests need, and where they live."""

    def __init__(self, sketch_dir: str | Path | None, embed_dir: str | Path | None, cosine: bool,
                 jaccard: bool) -> None:
        self.sketch_dir = None if sketch_dir is None else str(sketch_dir)
        self.embed_dir = None if embed_dir is None else str(embed_dir)
        self.cosine, self.jaccard = cosine, jaccard

    def load(self, shard: int, rows: np.ndarray, suffix: str) -> dict[str, pa.Array]:
        out: dict[str, pa.Array] = {}
        if self.jaccard and self.sketch_dir is not None:
            t = _shard_features(self.sketch_dir, shard, rows, ["signature", "shingles"])
            out["signature" + suffix] = t.column("signature").combine_chunks()
            out["shingles" + suffix] = t.column("shingles").combine_chunks()
        if self.cosine and self.embed_dir is not None:
            t = _shard_features(self.embed_dir, shard, rows, ["embedding"])
            out["embedding" + suffix] = t.column("embedding").combine_chunks()
        return out


class VerifyHalfTask(ShardTask):
    """First half of the feature join: the edges whose ``a`` lies in read shard ``i``, with ``a``'s features.

    Output rows ``a, b, part`` (the read shard of ``b``) plus ``signature_a`` / ``shingles_a`` /
    ``embedding_a`` as the tests need, sorted by ``part`` with one row group per value; each task reads one
    feature shard and its own candidate partition.
    """

    name = "verify-a"
    row_group_key = "part"

    def __init__(self, candidate_paths: list[str], shard_ranges: list[tuple[int, int]],
                 sketch_dir: str | Path | None, embed_dir: str | Path | None, cosine: bool, jaccard: bool) -> None:
        self.candidate_paths = [str(p) for p in candidate_paths]
        self.shard_ranges = [(int(s), int(e)) for s, e in shard_ranges]
        self.features = _Features(sketch_dir, embed_dir, cosine, jaccard)

    def n_shards(self) -> int:
        """One per read shard."""
        return len(self.shard_ranges)

    def settings(self) -> dict[str, Any]:
        """Which features travel."""
        return {"cosine": self.features.cosine, "jaccard": self.features.jaccard}

    def run(self, index: int) -> tuple[pa.Table, dict[str, Any]]:
        """Edges of partition ``index`` with the features of their ``a`` side."""
        t = pads.dataset(self.candidate_paths, format="parquet").to_table(
            columns=["a", "b"], filter=pc.field("dst") == index)
        pairs = np.stack([t.column("a").to_numpy(), t.column("b").to_numpy()], axis=1).astype(np.int64)
        if len(pairs):
            pairs = np.unique(pairs, axis=0)
        starts = np.array([s for s, _ in self.shard_ranges])
        part = (np.searchsorted(starts, pairs[:, 1], side="right") - 1).astype(np.int32)
        order = np.lexsort((pairs[:, 1], pairs[:, 0], part))
        pairs, part = pairs[order], part[order]
        cols: dict[str, Any] = {"a": pairs[:, 0], "b": pairs[:, 1], "part": part}
        cols.update(self.features.load(index, pairs[:, 0], "_a"))
        return pa.table(cols), {"candidates": len(pairs)}


class VerifyTask(ShardTask):
    """Second half of the join, and the tests: the edges whose ``b`` lies in read shard ``j``.

    Args:
        half_paths: The ``verify-a`` stage's shards.
        shard_ranges: ``[start, stop)`` row ids of every read shard (shard ``i`` of sketch / embed too).
        sketch_dir, embed_dir: Feature stages (None when the method does not use them).
        cosine_threshold, jaccard_threshold: The tests (None: not applied).
        num_perm: Signature length (for the MinHash pre-filter margin).
    """

    name = "verify"

    def __init__(self, half_paths: list[str], shard_ranges: list[tuple[int, int]],
                 sketch_dir: str | Path | None, embed_dir: str | Path | None, cosine_threshold: float | None,
                 jaccard_threshold: float | None, num_perm: int) -> None:
        self.half_paths = [str(p) for p in half_paths]
        self.shard_ranges = [(int(s), int(e)) for s, e in shard_ranges]
        self.features = _Features(sketch_dir, embed_dir, cosine_threshold is not None, jaccard_threshold is not None)
        self.cosine_threshold, self.jaccard_threshold = cosine_threshold, jaccard_threshold
        self.num_perm = int(num_perm)

    def n_shards(self) -> int:
        """One per read shard."""
        return len(self.shard_ranges)

    def settings(self) -> dict[str, Any]:
        """Thresholds."""
        return {"cosine": self.cosine_threshold, "jaccard": self.jaccard_threshold, "num_perm": self.num_perm}

    def run(self, index: int) -> tuple[pa.Table, dict[str, Any]]:
        """Verified pairs whose ``b`` lies in read shard ``index``."""
        t = pads.dataset(self.half_paths, format="parquet").to_table(filter=pc.field("part") == index)
        n = t.num_rows
        a, b = t.column("a").to_numpy(), t.column("b").to_numpy()
        # b's features once per distinct row (a row is the b of many edges), gathered per edge as needed
        rows_b, inverse = np.unique(b, return_inverse=True)
        side_b = self.features.load(index, rows_b, "_b")
        cos = np.full(n, np.nan, np.float32)
        jac = np.full(n, np.nan, np.float32)
        if self.cosine_threshold is not None and n:
            xb = to_matrix(side_b["embedding_b"], np.float32)
            column_a = t.column("embedding_a")
            for lo in range(0, n, COSINE_CHUNK):  # a's vectors in blocks: no (edges, dim) copy of the whole task
                hi = min(n, lo + COSINE_CHUNK)
                xa = to_matrix(column_a.slice(lo, hi - lo), np.float32)
                cos[lo:hi] = np.einsum("ij,ij->i", xa, xb[inverse[lo:hi]])
        if self.jaccard_threshold is not None and n:
            sa = to_matrix(t.column("signature_a"), np.uint32)
            sb = to_matrix(side_b["signature_b"], np.uint32)[inverse]
            estimate = (sa == sb).mean(axis=1)
            check = np.flatnonzero(estimate >= self.jaccard_threshold - minhash_margin(self.num_perm))
            lists = pa.concat_arrays([t.column("shingles_a").combine_chunks(),
                                      side_b["shingles_b"].take(pa.array(inverse, pa.int64()))])
            offsets = np.asarray(lists.offsets.to_numpy(), dtype=np.int64)
            values = lists.values.to_numpy()
            if offsets[0] != 0:
                values, offsets = values[offsets[0]:], offsets - offsets[0]
            jac[check] = exact_jaccard(values, offsets, check, check + n).astype(np.float32)
        keep, score, method = pair_verdicts(cos, jac, self.cosine_threshold, self.jaccard_threshold)
        out = pa.table({
            "a": a[keep], "b": b[keep], "score": pa.array(score[keep], pa.float32()),
            "method": pa.array([m for m, k in zip(method, keep.tolist()) if k], pa.string()),
            "cosine": pa.array(cos[keep], pa.float32()), "jaccard": pa.array(jac[keep], pa.float32()),
        })
        return out, {"candidates": n}
