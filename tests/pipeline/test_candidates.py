"""Stage ``candidates``: a bucket partition's edges and oversized-bucket report from one sort of its keys."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from reformer_retrieval.pipeline.candidates import CandidatesTask, edge_table, star_edges


def test_bucket_edges_equal_star_edges_of_each_family_band_key(tmp_path):
    rng = np.random.default_rng(7)
    n = 5_000
    family = rng.integers(0, 2, n).astype(np.int8)
    band = rng.integers(0, 4, n).astype(np.int16)
    key = rng.integers(0, 300, n).astype(np.uint64)
    key[:200] = 7  # one large bucket (about 25 members) per (family, band)
    rows = rng.permutation(n).astype(np.int64)
    path = tmp_path / "bands.parquet"
    pq.write_table(pa.table({"family": family, "band": band, "key": key, "row": rows,
                             "part": np.zeros(n, np.int32)}), path)
    starts = [0, 2_500]
    for edges in ("star+path", "star"):
        task = CandidatesTask([str(path)], 1, starts, bucket_cap=8, edges=edges)
        table, report = task.run(0)
        label = np.unique(np.stack([family.astype(np.uint64), band.astype(np.uint64), key], axis=1), axis=0,
                          return_inverse=True)[1].ravel()
        a, b, sizes = star_edges(label, rows, path=edges == "star+path")
        assert table.equals(edge_table(a, b, len(starts), np.asarray(starts)))
        assert report["buckets"] == int((sizes > 1).sum()) and report["largest_bucket"] == int(sizes.max())
        assert report["oversized_count"] == int((sizes > 8).sum()) > 0
        top = report["oversized"][0]
        in_top = (family == {"minhash": 0, "embedding": 1}[top["family"]]) & (band == top["band"])
        members = rows[in_top & (key == key[in_top & (rows == top["smallest_row"])][0])]
        assert top["size"] == len(members) == int(sizes.max()) and top["smallest_row"] == members.min()
