"""Large-star / small-star components equal SciPy's on a 100K chain, a 100K star and random graphs."""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from reformer_retrieval.dedup import union_find
from reformer_retrieval.pipeline.candidates import edge_table
from reformer_retrieval.pipeline.runner import StageInfo, StageRunner, shard_path, write_shard
from reformer_retrieval.pipeline.star_rounds import star_components


def _stages(tmp_path, n: int, a: np.ndarray, b: np.ndarray, n_read: int, n_verify: int):
    """Read and verify stages as the pipeline leaves them: rows 0..n-1 (every 7th skipped), edges a-b."""
    read_dir, verify_dir = tmp_path / "read", tmp_path / "verify"
    read_dir.mkdir()
    verify_dir.mkdir()
    bounds = np.linspace(0, n, n_read + 1).astype(int)
    reports = []
    for i, (s, e) in enumerate(itertools.pairwise(bounds.tolist())):
        rows = np.arange(s, e, dtype=np.int64)
        reason = pa.array(["null text" if r % 7 == 3 else None for r in rows.tolist()], pa.string())
        write_shard(pa.table({"row": rows, "skip_reason": reason}), shard_path(read_dir, i))
        reports.append({"start": int(s), "stop": int(e), "rows": int(e - s)})
    read = StageInfo("read", read_dir, "r", n_read, n, 0.0, reports)
    edges = edge_table(a, b, n_verify)
    dst = edges.column("dst").to_numpy()
    for q in range(n_verify):
        write_shard(edges.filter(pa.array(dst == q)).select(["a", "b"]), shard_path(verify_dir, q))
    verify = StageInfo("verify", verify_dir, "v", n_verify, edges.num_rows, 0.0, [{}] * n_verify)
    return read, verify


def _check(tmp_path, n, a, b, n_read=5, n_verify=4):
    valid = np.arange(n)[np.arange(n) % 7 != 3]
    keep = np.isin(a, valid) & np.isin(b, valid)
    a, b = a[keep], b[keep]
    read, verify = _stages(tmp_path, n, a, b, n_read, n_verify)
    runner = StageRunner(tmp_path / "stages")
    comp = star_components(runner, read, verify)
    table = pa.concat_tables([pq.read_table(p) for p in comp.paths])
    assert np.array_equal(table.column("row").to_numpy(), valid)
    want = union_find(len(valid), np.searchsorted(valid, a), np.searchsorted(valid, b))
    assert np.array_equal(table.column("cluster").to_numpy(), want)
    return table.column("cluster").to_numpy(), [s for s in runner.stages if s.endswith("-large")]


@pytest.mark.slow
def test_a_100k_chain_is_one_cluster(tmp_path):
    n = 100_000
    order = np.random.default_rng(0).permutation(np.arange(n)[np.arange(n) % 7 != 3])  # a chain in random order
    labels, rounds = _check(tmp_path, n, order[:-1], order[1:])
    assert np.all(labels == 0) and len(rounds) < 60


def test_a_100k_star_is_one_cluster(tmp_path):
    n = 100_000
    spokes = np.arange(n)[(np.arange(n) % 7 != 3)]
    hub = spokes[len(spokes) // 2]
    labels, _ = _check(tmp_path, n, spokes[spokes != hub], np.full(len(spokes) - 1, hub))
    assert np.all(labels == 0)


@pytest.mark.parametrize("seed", [1, 2])
def test_random_graphs(tmp_path, seed):
    rng = np.random.default_rng(seed)
    n = 5_000
    a, b = rng.integers(0, n, 3_000), rng.integers(0, n, 3_000)
    labels, _ = _check(tmp_path, n, a, b, n_read=3, n_verify=6)
    assert 1 < labels.max() + 1 < n
