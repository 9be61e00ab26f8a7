"""Stage ``bands``: one LSH key per (document, band), for MinHash signatures and/or sign-random-projection bits.

Output shards hold ``family`` (0 MinHash, 1 sign random projection), ``band``, ``key`` (uint64), ``row`` and
``part`` (the candidate partition ``key mod n_parts``), sorted by ``part`` with one row group per value, so
the ``candidates`` stage reads partition ``j`` of every shard by a filter that skips the other row groups.

Band / row counts of both families follow from the threshold and a recall target (`DEFAULT_RECALL`): MinHash
by `reformer_retrieval.indexes.minhash.optimal_params` (as `find_duplicates` does), sign random projection
by `srp_params`, the fewest keys per document that make a pair at the cosine threshold a candidate with
probability at least the target (the collision math of `reformer_retrieval.indexes.lsh_params`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from reformer_retrieval.indexes.lsh_params import DEFAULT_RECALL, lsh_recall, table_probability
from reformer_retrieval.indexes.minhash import _GOLD, EMPTY, MinHashIndex
from reformer_retrieval.indexes.minhash import _mix64 as _mix
from reformer_retrieval.pipeline.runner import ShardTask, shard_path
from reformer_retrieval.pipeline.sketch import to_matrix

__all__ = ["DEFAULT_MAX_BANDS", "DEFAULT_RECALL", "BandsTask", "srp_params", "srp_recall"]

#: Most sign-random-projection bands per document.
DEFAULT_MAX_BANDS = 64
FAMILY_MINHASH, FAMILY_SRP = 0, 1
#: Rows whose sign bits are computed at once (64 bands x 25 bits: ~330 MB of float64 projections and
#: uint64 bits per 8,192 rows, instead of ~2.6 GB for a 65K-row shard at once).
SRP_CHUNK = 8_192


def srp_recall(cosine: float, bands: int, rows: int) -> float:
    """Probability that two unit vectors at ``cosine`` share one of ``bands`` bands of ``rows`` sign bits.

    `reformer_retrieval.indexes.lsh_params.lsh_recall` with no bit flips: ``1 - (1 - p**rows)**bands``,
    ``p = 1 - arccos(cosine) / pi``.
    """
    return lsh_recall(max(-1.0, min(1.0, cosine)), bands, rows, 0)


def srp_params(threshold: float, recall: float = DEFAULT_RECALL, max_bands: int = DEFAULT_MAX_BANDS) -> tuple[int, int]:
    """(bands, rows) of sign random projection for a cosine ``threshold``: ``srp_recall(threshold) >= recall``.

    Among settings with at most ``max_bands`` bands, the one with the most bits per band (fewest chance
    collisions of unrelated documents: ``0.5**rows`` per band at cosine 0), and for it the fewest bands.
    """
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"the cosine threshold must be in [-1, 1], got {threshold}")
    if not 0.0 < recall < 1.0:
        raise ValueError(f"recall must be in (0, 1), got {recall}")
    best = (1, 1)
    for rows in range(1, 65):
        q = table_probability(threshold, rows, 0)
        if q >= 1.0:
            bands = 1
        elif q <= 0.0:
            break
        else:
            bands = math.ceil(math.log(1.0 - recall) / math.log1p(-q))
        if bands > max_bands:
            break
        best = (bands, rows)
    if srp_recall(threshold, *best) < recall:
        raise ValueError(f"no sign-LSH setting with at most {max_bands} bands reaches recall {recall} at cosine "
                         f"{threshold}; raise max_bands or use the exact (flat) candidates")
    return best


def srp_planes(dim: int, bands: int, rows: int, seed: int) -> np.ndarray:
    """The random hyperplanes ``(dim, bands * rows)`` (float64, from ``seed``)."""
    return np.random.default_rng(seed).standard_normal((dim, bands * rows))


class BandsTask(ShardTask):
    """Band keys of each sketch and/or embed shard (shard ``i`` reads shard ``i`` of both)."""

    name = "bands"
    row_group_key = "part"

    def __init__(self, n_shards: int, n_parts: int, sketch_dir: str | Path | None = None,
                 minhash: dict[str, Any] | None = None, embed_dir: str | Path | None = None,
                 srp: dict[str, Any] | None = None) -> None:
        self._n, self.n_parts = int(n_shards), int(n_parts)
        self.sketch_dir = None if sketch_dir is None else str(sketch_dir)
        self.embed_dir = None if embed_dir is None else str(embed_dir)
        self.minhash, self.srp = minhash, srp

    def n_shards(self) -> int:
        """One per read shard."""
        return self._n

    def settings(self) -> dict[str, Any]:
        """Band settings of each family and the partition count."""
        return {"parts": self.n_parts, "minhash": self.minhash, "srp": self.srp}

    def run(self, index: int) -> tuple[pa.Table, dict[str, Any]]:
        """Keys of shard ``index``, sorted by partition."""
        fam, band, key, row = [], [], [], []
        if self.minhash is not None and self.sketch_dir is not None:
            t = pq.read_table(shard_path(self.sketch_dir, index), columns=["row", "signature"])
            mh = self.minhash
            sig = to_matrix(t.column("signature"), np.uint32)
            live = ~(sig == EMPTY).all(axis=1)
            index_ = MinHashIndex(threshold=mh["threshold"], num_perm=mh["num_perm"], bands=mh["bands"],
                                  rows=mh["rows"], seed=mh["seed"])
            keys = index_.band_keys(sig[live])
            rows = t.column("row").to_numpy()[live]
            self._append(fam, band, key, row, FAMILY_MINHASH, keys, rows)
        if self.srp is not None and self.embed_dir is not None:
            t = pq.read_table(shard_path(self.embed_dir, index), columns=["row", "embedding"])
            x = to_matrix(t.column("embedding"), np.float64)
            s = self.srp
            planes = srp_planes(x.shape[1], s["bands"], s["rows"], s["seed"])
            shifts = np.arange(s["rows"], dtype=np.uint64)
            packed = np.empty((len(x), s["bands"]), np.uint64)
            for c in range(0, len(x), SRP_CHUNK):  # in row blocks: the bits take 8 bytes each until packed
                bits = (x[c:c + SRP_CHUNK] @ planes > 0).reshape(-1, s["bands"], s["rows"]).astype(np.uint64)
                packed[c:c + SRP_CHUNK] = (bits << shifts).sum(axis=2, dtype=np.uint64)
            salt = (np.arange(s["bands"], dtype=np.uint64) + np.uint64(1)) * _GOLD
            self._append(fam, band, key, row, FAMILY_SRP, _mix(packed ^ salt[None, :]), t.column("row").to_numpy())
        family = np.concatenate(fam) if fam else np.zeros(0, np.int8)
        bands = np.concatenate(band) if band else np.zeros(0, np.int16)
        keys = np.concatenate(key) if key else np.zeros(0, np.uint64)
        rows = np.concatenate(row) if row else np.zeros(0, np.int64)
        part = (_mix(keys ^ family.astype(np.uint64)) % np.uint64(self.n_parts)).astype(np.int32)
        order = np.argsort(part, kind="stable")
        out = pa.table({"family": family[order], "band": bands[order], "key": keys[order], "row": rows[order],
                        "part": part[order]})
        return out, {}

    @staticmethod
    def _append(fam: list, band: list, key: list, row: list, family: int, keys: np.ndarray, rows: np.ndarray) -> None:
        n, b = keys.shape
        fam.append(np.full(n * b, family, np.int8))
        band.append(np.tile(np.arange(b, dtype=np.int16), n))
        key.append(keys.ravel())
        row.append(np.repeat(rows.astype(np.int64), b))
