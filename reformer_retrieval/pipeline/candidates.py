"""Stage ``candidates``: band buckets -> star edges; exact range search (FAISS flat) for the embedding method.

Bucket tasks (one per band partition): the keys of partition ``j`` from every ``bands`` shard are grouped by
``(family, band, key)``; a bucket with members ``m0 < m1 < ... < mk`` emits the *star* edges ``(m0, mi)``
and (``edges="star+path"``, the default) the *path* edges ``(m(i-1), mi)``, never all ``k (k + 1) / 2``
pairs, so a bucket of 100K documents costs at most 200K edges, not 5 x 10^9. A bucket
larger than ``bucket_cap`` is still starred (nothing is dropped) and reported (``oversized`` in the
stage report and in summary.json): it usually means boilerplate or near-empty documents.

Flat tasks (``index="flat"``, one per embed shard): every pair with FAISS inner product ``>= threshold``
between the shard's vectors and all vectors (an exact range search, as `find_duplicates` does today; the
index of all vectors is loaded once per process or actor).

Output shards hold ``a < b`` (int64 row ids) and ``dst`` (the read shard holding ``a``: the ``verify``
stage joins each side's features shard by shard), unique within the shard, sorted by ``dst`` with one row
group per value.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from reformer_retrieval.pipeline.bands import _mix
from reformer_retrieval.pipeline.runner import ShardTask
from reformer_retrieval.pipeline.sketch import to_matrix

__all__ = ["DEFAULT_BUCKET_CAP", "EDGE_MODES", "CandidatesTask", "edge_table", "star_edges"]

#: Edges a bucket emits: star to its smallest member plus the path through its members (default), or the star alone.
EDGE_MODES = ("star+path", "star")

#: Buckets with more members than this are reported in the summary (and still starred, never dropped).
DEFAULT_BUCKET_CAP = 10_000


def star_edges(groups: np.ndarray, rows: np.ndarray, path: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear-size edges of buckets: ``groups`` (sortable bucket labels) and member ``rows``, any order.

    Every non-smallest member ``b`` is joined to its bucket's smallest member ``a`` (the star) and, with
    ``path``, to the next member in row order (the path), so a bucket of ``k`` members gives at most
    ``2 (k - 1)`` edges, never ``k (k - 1) / 2``. The path catches duplicates whose link to the smallest
    member fails verification (wiki_versions, MinHash: the star alone keeps 0.988 of the all-pairs
    co-clustered pairs, star + path 1.000). Returns ``(a, b, sizes)``, ``sizes`` per bucket in label order.
    """
    order = np.lexsort((rows, groups))
    g = groups[order]
    start = np.ones(len(g), dtype=bool)
    start[1:] = g[1:] != g[:-1]
    return _sorted_star_edges(start, rows[order], path)


def _sorted_star_edges(start: np.ndarray, r: np.ndarray, path: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`star_edges` of members ``r`` already sorted by bucket, then row; ``start`` marks each bucket's first."""
    if len(r) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    head_index = np.cumsum(start) - 1
    heads = r[start]
    a = heads[head_index]
    keep = ~start
    sizes = np.diff(np.append(np.flatnonzero(start), len(r)))
    if not path:
        return a[keep], r[keep], sizes
    prev = np.concatenate([[0], r[:-1]])
    chain = keep & (prev != a)  # the second member's path edge is its star edge already
    return np.concatenate([a[keep], prev[chain]]), np.concatenate([r[keep], r[chain]]), sizes


def edge_table(a: np.ndarray, b: np.ndarray, n_dst: int, starts: np.ndarray | None = None) -> pa.Table:
    """Unique edges ``(min, max)`` without self-loops, with their partition ``dst``, sorted by it.

    ``dst`` is the read shard holding ``min`` when ``starts`` (each shard's first row id) is given, else a
    hash of ``min`` modulo ``n_dst``.
    """
    lo, hi = np.minimum(a, b).astype(np.int64), np.maximum(a, b).astype(np.int64)
    keep = lo != hi
    lo, hi = lo[keep], hi[keep]
    if len(lo):
        pairs = np.unique(np.stack([lo, hi], axis=1), axis=0)
        lo, hi = pairs[:, 0], pairs[:, 1]
    if starts is not None:
        dst = (np.searchsorted(np.asarray(starts), lo, side="right") - 1).astype(np.int32)
    else:
        dst = (_mix(lo.astype(np.uint64)) % np.uint64(max(1, n_dst))).astype(np.int32)
    order = np.lexsort((hi, lo, dst))
    return pa.table({"a": lo[order], "b": hi[order], "dst": dst[order]})


class CandidatesTask(ShardTask):
    """Candidate edges: ``n_parts`` bucket tasks, then (``flat_threshold`` set) one flat task per embed shard."""

    name = "candidates"
    row_group_key = "dst"

    def __init__(self, bands_paths: list[str], n_parts: int, shard_starts: list[int],
                 bucket_cap: int = DEFAULT_BUCKET_CAP, embed_paths: list[str] | None = None,
                 flat_threshold: float | None = None, edges: str = "star+path") -> None:
        if edges not in EDGE_MODES:
            raise ValueError(f"edges must be one of {', '.join(EDGE_MODES)}, got {edges!r}")
        self.edges = edges
        self.shard_starts = [int(x) for x in shard_starts]
        self.bands_paths, self.n_parts, self.n_dst = [str(p) for p in bands_paths], int(n_parts), len(shard_starts)
        self.bucket_cap = int(bucket_cap)
        self.embed_paths = [str(p) for p in embed_paths or []]
        self.flat_threshold = flat_threshold
        self.stateful = flat_threshold is not None and bool(self.embed_paths)
        self._state_index: Any = None

    def n_shards(self) -> int:
        """Bucket partitions plus, for flat candidates, one task per embed shard."""
        n_flat = len(self.embed_paths) if self.flat_threshold is not None else 0
        return (self.n_parts if self.bands_paths else 0) + n_flat

    def settings(self) -> dict[str, Any]:
        """Partitioning, cap and flat threshold."""
        return {"parts": self.n_parts, "starts": self.shard_starts, "cap": self.bucket_cap,
                "flat": self.flat_threshold, "edges": self.edges}

    def setup(self) -> None:
        """Build the flat index of all vectors (flat candidates only)."""
        if self.flat_threshold is None or not self.embed_paths:
            return
        from reformer_retrieval.indexes.store import build_index

        t = pads.dataset(self.embed_paths, format="parquet").to_table(columns=["row", "embedding"])
        x = to_matrix(t.column("embedding"), np.float32)
        self._state_rows = t.column("row").to_numpy()
        self._state_index = build_index("flat", x, list(range(len(x))))

    def run(self, index: int) -> tuple[pa.Table, dict[str, Any]]:
        """Edges of bucket partition ``index`` (or of flat query shard ``index - n_parts``)."""
        n_bucket_tasks = self.n_parts if self.bands_paths else 0
        if index < n_bucket_tasks:
            return self._buckets(index)
        return self._flat(index - n_bucket_tasks)

    def _buckets(self, part: int) -> tuple[pa.Table, dict[str, Any]]:
        t = pads.dataset(self.bands_paths, format="parquet").to_table(
            columns=["family", "band", "key", "row"], filter=pc.field("part") == part)
        family = t.column("family").to_numpy().astype(np.uint64)
        band = t.column("band").to_numpy().astype(np.uint64)
        key = t.column("key").to_numpy()
        rows = t.column("row").to_numpy()
        # one sort, by bucket (family, band, key) then row: the buckets' members in the order star edges need
        order = np.lexsort((rows, key, band, family))
        family, band, key, rows = family[order], band[order], key[order], rows[order]
        start = np.ones(len(rows), bool)
        start[1:] = (family[1:] != family[:-1]) | (band[1:] != band[:-1]) | (key[1:] != key[:-1])
        a, b, sizes = _sorted_star_edges(start, rows, path=self.edges == "star+path")
        big = np.flatnonzero(sizes > self.bucket_cap)
        report: dict[str, Any] = {"buckets": int((sizes > 1).sum()), "largest_bucket": int(sizes.max(initial=0)),
                                  "oversized": []}
        if len(big):
            firsts = np.flatnonzero(start)
            for g in big[np.argsort(-sizes[big], kind="stable")][:20].tolist():
                first = firsts[g]
                report["oversized"].append({"family": ["minhash", "embedding"][int(family[first])],
                                            "band": int(band[first]), "size": int(sizes[g]),
                                            "smallest_row": int(rows[first])})
            report["oversized_count"] = len(big)
        return edge_table(a, b, self.n_dst, np.asarray(self.shard_starts)), report

    def _flat(self, shard: int) -> tuple[pa.Table, dict[str, Any]]:
        t = pq.read_table(self.embed_paths[shard], columns=["row", "embedding"])
        q = to_matrix(t.column("embedding"), np.float32)
        own = t.column("row").to_numpy()
        if len(q) == 0 or self._state_index is None:
            return edge_table(np.zeros(0, np.int64), np.zeros(0, np.int64), self.n_dst, np.asarray(self.shard_starts)), {}
        res = self._state_index.range_search(q, float(self.flat_threshold))
        a = own[res.query_index()]
        b = self._state_rows[np.asarray(res.rows, dtype=np.int64)]
        return edge_table(a, b, self.n_dst, np.asarray(self.shard_starts)), {}
