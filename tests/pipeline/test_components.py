"""Components: a 100K-node chain and a 100K star are one cluster each; bucket edges stay linear."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from reformer_retrieval.pipeline.candidates import star_edges
from reformer_retrieval.pipeline.components import ComponentsTask

N = 100_000


def _components(tmp_path, a, b, n=N):
    read = tmp_path / "read.parquet"
    pq.write_table(pa.table({"row": np.arange(n, dtype=np.int64), "skip_reason": pa.nulls(n, pa.string())}), read)
    verify = tmp_path / "verify.parquet"
    pq.write_table(pa.table({"a": np.asarray(a, np.int64), "b": np.asarray(b, np.int64)}), verify)
    table, report = ComponentsTask([str(read)], [str(verify)]).run(0)
    return table.column("cluster").to_numpy(), report


def test_chain_is_one_cluster(tmp_path):
    rows = np.random.default_rng(0).permutation(N)  # a chain through the rows in random order
    labels, report = _components(tmp_path, rows[:-1], rows[1:])
    assert report["edges"] == N - 1
    assert np.all(labels == 0)


def test_star_and_singletons(tmp_path):
    hub = 8
    spokes = np.setdiff1d(np.arange(0, N, 2), [hub])
    labels, _ = _components(tmp_path, spokes, np.full(len(spokes), hub))
    assert len(np.unique(labels[np.arange(0, N, 2)])) == 1
    assert len(np.unique(labels)) == 1 + N // 2  # one star + every odd row alone
    assert labels[0] == 0 and labels[1] == 1  # numbered by each cluster's first row


def test_star_edges_of_a_big_bucket_join_every_member():
    rng = np.random.default_rng(1)
    members = rng.permutation(N)[: N // 2]
    groups = np.zeros(len(members), np.int64)
    # a second bucket of four, given in shuffled order
    members = np.concatenate([members, [N + 5, N + 3, N + 9, N + 4]])
    groups = np.concatenate([groups, [1, 1, 1, 1]])
    a, b, sizes = star_edges(groups, members, path=False)
    assert len(a) == len(members) - 2  # k - 1 edges per bucket, never all pairs
    assert sizes.tolist() == [N // 2, 4]
    hub = members[: N // 2].min()
    assert set(a[: N // 2 - 1].tolist()) == {hub}
    assert sorted(zip(a[-3:].tolist(), b[-3:].tolist())) == [(N + 3, N + 4), (N + 3, N + 5), (N + 3, N + 9)]
    # star + path: the star plus each member's link to the previous one (at most 2 (k - 1) edges)
    a, b, _ = star_edges(groups, members)
    assert len(a) == 2 * (len(members) - 2) - 2
    small = {(x, y) for x, y in zip(a.tolist(), b.tolist()) if x >= N}
    assert small == {(N + 3, N + 4), (N + 3, N + 5), (N + 3, N + 9), (N + 4, N + 5), (N + 5, N + 9)}
