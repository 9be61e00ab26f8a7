"""Stage ``sketch``: read shards -> ``row``, ``signature`` (MinHash, uint32 x num_perm), ``shingles`` (sorted set).

The shingles and signatures are exactly those of `reformer_retrieval.dedup.find_duplicates` for the same
settings (`Shingler` of the MinHash index, `MinHasher` of the same seed): a signature is the per-document
minimum over its own shingles, so it does not depend on which documents share a shard. The sorted unique
shingle hashes are kept for the exact Jaccard of the ``verify`` stage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from reformer_retrieval.indexes.minhash import MinHasher, Shingler
from reformer_retrieval.pipeline.runner import ShardTask, shard_path

__all__ = ["SketchTask", "list_array", "read_valid", "to_matrix"]


def read_valid(stage_dir: str | Path, index: int, columns: list[str]) -> pa.Table:
    """``columns`` of read shard ``index``, rows with no skip reason only."""
    table = pq.read_table(shard_path(stage_dir, index), columns=[*columns, "skip_reason"])
    return table.filter(pc.is_null(table.column("skip_reason"))).select(columns)


def list_array(arrays: list[np.ndarray], value_type: pa.DataType) -> pa.Array:
    """A ``list<value_type>`` Arrow array of numpy arrays, built from one offsets array (no Python loop over values)."""
    lengths = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32 if lengths.sum() < 2**31 else np.int64)
    values = np.concatenate(arrays) if arrays and lengths.sum() else np.zeros(0, value_type.to_pandas_dtype())
    cls = pa.ListArray if offsets.dtype == np.int32 else pa.LargeListArray
    return cls.from_arrays(pa.array(offsets), pa.array(values, value_type))


def to_matrix(column: pa.ChunkedArray | pa.Array, dtype: Any) -> np.ndarray:
    """A ``fixed_size_list`` column as an ``(n, width)`` numpy array."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    width = arr.type.list_size
    if len(arr) == 0:
        return np.zeros((0, width), dtype=dtype)
    return arr.flatten().to_numpy(zero_copy_only=False).reshape(len(arr), width).astype(dtype, copy=False)


class SketchTask(ShardTask):
    """Shingles and MinHash signatures of each read shard."""

    name = "sketch"

    def __init__(self, read_dir: str | Path, n_shards: int, num_perm: int, shingle: str, ngram: int, seed: int) -> None:
        self.read_dir, self._n = str(read_dir), int(n_shards)
        self.num_perm, self.shingle, self.ngram, self.seed = int(num_perm), shingle, int(ngram), int(seed)

    def n_shards(self) -> int:
        """One per read shard."""
        return self._n

    def settings(self) -> dict[str, Any]:
        """MinHash settings."""
        return {"num_perm": self.num_perm, "shingle": self.shingle, "ngram": self.ngram, "seed": self.seed}

    def run(self, index: int) -> tuple[pa.Table, dict[str, Any]]:
        """Signatures and shingle sets of read shard ``index``."""
        hasher = MinHasher(self.num_perm, self.seed, Shingler(self.shingle, self.ngram))
        table = read_valid(self.read_dir, index, ["row", "text"])
        sets = [hasher.shingler.shingles(t) for t in table.column("text").to_pylist()]
        sig = hasher.signatures_from_shingles(sets) if sets else np.zeros((0, self.num_perm), np.uint32)
        out = pa.table({
            "row": table.column("row"),
            "signature": pa.FixedSizeListArray.from_arrays(pa.array(sig.ravel(), pa.uint32()), self.num_perm),
            "shingles": list_array(sets, pa.uint64()),
        })
        return out, {}
