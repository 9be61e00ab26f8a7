"""Stage ``verify``: candidate edges -> verified pairs (exact cosine and / or exact Jaccard), vectorised.

The same tests as `reformer_retrieval.dedup.find_duplicates`, so kept pairs and scores match it:

* cosine: the float32 dot product of the two stored unit vectors, kept if ``>= threshold``;
* Jaccard: exact, of the two sorted shingle sets, computed only for pairs whose MinHash estimate (share of
  equal signature entries) is at least ``threshold - max(0.1, 2.5 / sqrt(num_perm))``, kept if ``>= threshold``;
* hybrid: both are computed, a pair passes if either test does; ``score`` is the cosine when the embedding
  test passed, else the Jaccard; ``method`` names the tests that passed.

`exact_jaccard` intersects many pairs of sets at once: the two sets of every pair are laid side by side,
tagged with the pair's number, sorted together, and equal neighbours with the same tag are counted, with
no Python loop per pair. Verify task ``q`` reads the edges of partition ``q`` of every candidates shard
and loads the signatures / shingles / vectors of just the rows those edges name.
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

from reformer_retrieval.pipeline.runner import ShardTask, shard_path
from reformer_retrieval.pipeline.sketch import to_matrix

__all__ = ["VerifyTask", "exact_jaccard", "minhash_margin", "pair_verdicts"]

_LABELS = np.array(["minhash", "embedding", "minhash", "embedding+minhash"])


def minhash_margin(num_perm: int) -> float:
    """How far below the threshold a MinHash estimate may lie and still get the exact check."""
    return max(0.1, 2.5 / np.sqrt(num_perm))


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


class VerifyTask(ShardTask):
    """Verifies the edges of candidate partition ``q`` (one task per partition).

    Args:
        candidate_paths: The candidates stage's shards.
        n_dst: Its verify partition count.
        shard_ranges: ``[start, stop)`` row ids of every read shard (shard ``i`` of sketch / embed too).
        sketch_dir, embed_dir: Feature stages (None when the method does not use them).
        cosine_threshold, jaccard_threshold: The tests (None: not applied).
        num_perm: Signature length (for the MinHash pre-filter margin).
    """

    name = "verify"

    def __init__(self, candidate_paths: list[str], n_dst: int, shard_ranges: list[tuple[int, int]],
                 sketch_dir: str | Path | None, embed_dir: str | Path | None, cosine_threshold: float | None,
                 jaccard_threshold: float | None, num_perm: int) -> None:
        self.candidate_paths, self.n_dst = [str(p) for p in candidate_paths], int(n_dst)
        self.shard_ranges = [(int(s), int(e)) for s, e in shard_ranges]
        self.sketch_dir = None if sketch_dir is None else str(sketch_dir)
        self.embed_dir = None if embed_dir is None else str(embed_dir)
        self.cosine_threshold, self.jaccard_threshold = cosine_threshold, jaccard_threshold
        self.num_perm = int(num_perm)

    def n_shards(self) -> int:
        """One per verify partition."""
        return self.n_dst

    def settings(self) -> dict[str, Any]:
        """Thresholds."""
        return {"cosine": self.cosine_threshold, "jaccard": self.jaccard_threshold}

    def _load(self, stage_dir: str, needed: np.ndarray, columns: list[str]) -> tuple[np.ndarray, pa.Table]:
        """Rows ``needed`` (sorted) of a feature stage: (their row ids in ``needed`` order, the table)."""
        parts = []
        for i, (start, stop) in enumerate(self.shard_ranges):
            lo, hi = np.searchsorted(needed, [start, stop])
            if hi <= lo:
                continue
            t = pq.read_table(shard_path(stage_dir, i), columns=["row", *columns])
            parts.append(t.filter(pc.is_in(t.column("row"), pa.array(needed[lo:hi]))))
        table = pa.concat_tables(parts) if parts else None
        if table is None or table.num_rows != len(needed):
            have = 0 if table is None else table.num_rows
            raise RuntimeError(f"{stage_dir}: holds {have} of the {len(needed)} rows the candidates name")
        order = np.argsort(table.column("row").to_numpy(), kind="stable")
        return order, table

    def run(self, index: int) -> tuple[pa.Table, dict[str, Any]]:
        """Verified pairs of partition ``index``."""
        t = pads.dataset(self.candidate_paths, format="parquet").to_table(
            columns=["a", "b"], filter=pc.field("dst") == index)
        pairs = np.stack([t.column("a").to_numpy(), t.column("b").to_numpy()], axis=1).astype(np.int64)
        if len(pairs):
            pairs = np.unique(pairs, axis=0)
        needed = np.unique(pairs)
        pa_, pb_ = np.searchsorted(needed, pairs[:, 0]), np.searchsorted(needed, pairs[:, 1])
        cos = np.full(len(pairs), np.nan, np.float32)
        jac = np.full(len(pairs), np.nan, np.float32)
        if self.cosine_threshold is not None and len(pairs):
            order, table = self._load(self.embed_dir, needed, ["embedding"])
            x = to_matrix(table.column("embedding"), np.float32)[order]
            cos = np.einsum("ij,ij->i", x[pa_], x[pb_]).astype(np.float32)
        if self.jaccard_threshold is not None and len(pairs):
            order, table = self._load(self.sketch_dir, needed, ["signature", "shingles"])
            sig = to_matrix(table.column("signature"), np.uint32)[order]
            estimate = (sig[pa_] == sig[pb_]).mean(axis=1)
            check = np.flatnonzero(estimate >= self.jaccard_threshold - minhash_margin(self.num_perm))
            shingles = table.column("shingles").combine_chunks().take(pa.array(order))
            offsets = np.asarray(shingles.offsets.to_numpy(), dtype=np.int64)
            values = shingles.values.to_numpy()
            if offsets[0] != 0:  # a sliced list array: values start at offsets[0]
                values, offsets = values[offsets[0]:], offsets - offsets[0]
            jac[check] = exact_jaccard(values, offsets, pa_[check], pb_[check]).astype(np.float32)
        keep, score, method = pair_verdicts(cos, jac, self.cosine_threshold, self.jaccard_threshold)
        out = pa.table({
            "a": pairs[keep, 0], "b": pairs[keep, 1], "score": pa.array(score[keep], pa.float32()),
            "method": pa.array([m for m, k in zip(method, keep.tolist()) if k], pa.string()),
            "cosine": pa.array(cos[keep], pa.float32()), "jaccard": pa.array(jac[keep], pa.float32()),
        })
        return out, {"candidates": len(pairs)}
