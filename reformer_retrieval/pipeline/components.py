"""Stage ``components``: verified pairs -> one cluster label per document (connected components).

`scipy.sparse.csgraph.connected_components` over the verified edges, memory O(documents + edges), linear
time; labels are numbered by each cluster's first document in corpus order (as
`reformer_retrieval.dedup.union_find` numbers them), so they do not depend on the edge order. A chain of
100K documents or a star of 100K spokes is one cluster.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from reformer_retrieval.dedup import union_find
from reformer_retrieval.pipeline.runner import ShardTask

__all__ = ["ComponentsTask", "valid_rows"]


def valid_rows(read_paths: list[str]) -> np.ndarray:
    """Sorted row ids of the documents (rows without a skip reason)."""
    t = pads.dataset(read_paths, format="parquet").to_table(columns=["row"], filter=pc.field("skip_reason").is_null())
    return np.sort(t.column("row").to_numpy())


class ComponentsTask(ShardTask):
    """One shard: ``row``, ``cluster`` for every document."""

    name = "components"

    def __init__(self, read_paths: list[str], verify_paths: list[str]) -> None:
        self.read_paths, self.verify_paths = [str(p) for p in read_paths], [str(p) for p in verify_paths]

    def n_shards(self) -> int:
        """A single shard."""
        return 1

    def run(self, index: int) -> tuple[pa.Table, dict[str, Any]]:
        """Cluster of every document."""
        rows = valid_rows(self.read_paths)
        edges = pads.dataset(self.verify_paths, format="parquet").to_table(columns=["a", "b"])
        a = np.searchsorted(rows, edges.column("a").to_numpy())
        b = np.searchsorted(rows, edges.column("b").to_numpy())
        labels = union_find(len(rows), a, b)
        return pa.table({"row": rows, "cluster": labels}), {"edges": edges.num_rows}
