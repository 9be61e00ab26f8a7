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
