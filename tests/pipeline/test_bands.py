"""Sign-random-projection band parameters reach the recall target at the threshold (math and simulation)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from reformer_retrieval.pipeline.bands import BandsTask, srp_params, srp_recall


@pytest.mark.parametrize("threshold", [0.41, 0.48, 0.8, 0.95])
def test_srp_params_reach_the_recall_target(threshold):
    bands, rows = srp_params(threshold, recall=0.99, max_bands=64)
    assert bands <= 64 and srp_recall(threshold, bands, rows) >= 0.99
    # one more bit per band would need more than 64 bands
    p = 1 - math.acos(threshold) / math.pi
    assert math.ceil(math.log(0.01) / math.log1p(-(p ** (rows + 1)))) > 64


def test_srp_candidates_find_pairs_at_the_threshold(tmp_path):
    """Simulated pairs at cosine 0.8: at least 0.99 of them share a band key (up to sampling noise)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    threshold, dim, n_pairs = 0.8, 64, 2000
    rng = np.random.default_rng(3)
    x = rng.standard_normal((n_pairs, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    noise = rng.standard_normal((n_pairs, dim))
    noise -= (noise * x).sum(1, keepdims=True) * x
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    y = threshold * x + math.sqrt(1 - threshold**2) * noise  # cosine(x, y) == threshold exactly
    vectors = np.empty((2 * n_pairs, dim), np.float32)
    vectors[0::2], vectors[1::2] = x, y
    embed = tmp_path / "embed"
    embed.mkdir()
    pq.write_table(pa.table({"row": np.arange(2 * n_pairs, dtype=np.int64),
                             "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim)}),
                   embed / "part-00000.parquet")
    bands, rows = srp_params(threshold)
    table, _ = BandsTask(1, 1, embed_dir=embed, srp={"bands": bands, "rows": rows, "seed": 0}).run(0)
    key = table.column("key").to_numpy().reshape(-1)
    row = table.column("row").to_numpy()
    band = table.column("band").to_numpy()
    keys = np.zeros((2 * n_pairs, bands), np.uint64)
    keys[row, band] = key
    found = (keys[0::2] == keys[1::2]).any(axis=1).mean()
    assert found >= 0.985  # expected >= 0.99; 2000 pairs: standard error 0.0022


def test_srp_keys_do_not_depend_on_the_row_block_size(tmp_path, monkeypatch):
    """The sign bits are computed in blocks of SRP_CHUNK rows (bounded memory); the keys equal one block's."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from reformer_retrieval.pipeline import bands as bands_mod

    vectors = np.random.default_rng(5).standard_normal((50, 16)).astype(np.float32)
    embed = tmp_path / "embed"
    embed.mkdir()
    pq.write_table(pa.table({"row": np.arange(50, dtype=np.int64),
                             "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), 16)}),
                   embed / "part-00000.parquet")
    task = BandsTask(1, 3, embed_dir=embed, srp={"bands": 6, "rows": 9, "seed": 2})
    whole, _ = task.run(0)
    monkeypatch.setattr(bands_mod, "SRP_CHUNK", 7)
    blocks, _ = task.run(0)
    assert whole.equals(blocks) and whole.num_rows == 50 * 6
    planes = bands_mod.srp_planes(16, 6, 9, 2)
    bits = (vectors.astype(np.float64) @ planes > 0).reshape(50, 6, 9)
    first = whole.filter(pa.compute.equal(whole.column("band"), 0)).to_pydict()
    packed = (bits[:, 0, :].astype(np.uint64) << np.arange(9, dtype=np.uint64)).sum(axis=1, dtype=np.uint64)
    salted = bands_mod._mix(packed ^ (np.uint64(1) * bands_mod._GOLD))
    assert dict(zip(first["row"], first["key"])) == dict(zip(range(50), salted.tolist()))


def test_srp_bits_memory_is_bounded_by_the_row_block(tmp_path, monkeypatch):
    """64 bands x 25 bits of 4,000 rows at once take ~50 MB per bit array; in blocks of 512 rows, a few MB."""
    import tracemalloc

    import pyarrow as pa
    import pyarrow.parquet as pq

    from reformer_retrieval.pipeline import bands as bands_mod

    n, dim = 4000, 32
    vectors = np.random.default_rng(6).standard_normal((n, dim)).astype(np.float32)
    embed = tmp_path / "embed"
    embed.mkdir()
    pq.write_table(pa.table({"row": np.arange(n, dtype=np.int64),
                             "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim)}),
                   embed / "part-00000.parquet")
    monkeypatch.setattr(bands_mod, "SRP_CHUNK", 512)
    task = BandsTask(1, 1, embed_dir=embed, srp={"bands": 64, "rows": 25, "seed": 0})
    tracemalloc.start()
    try:
        task.run(0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 40e6  # one block at once (n x 1600 float64 projections alone would be 51 MB)
