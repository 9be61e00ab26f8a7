"""benchmarks/channel_weight.py: the lexical share is chosen on the dev sets, and the whole run on a tiny model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import channel_weight

from reformer_retrieval import ReformerConfig, ReformerEncoder
from reformer_retrieval.checkpoint import load_model


def _sims(labels: np.ndarray, informative: np.ndarray, seed: int) -> np.ndarray:
    """Cosines that separate the pairs of ``informative`` clusters (noise elsewhere)."""
    rng = np.random.default_rng(seed)
    same = labels[:, None] == labels[None, :]
    good = informative[labels][:, None] & informative[labels][None, :]
    sim = rng.uniform(0.0, 0.6, size=same.shape) + np.where(same & good, 0.5, 0.0) + np.where(same & ~good, 0.1, 0.0)
    return (sim + sim.T) / 2


def test_a_channel_that_adds_nothing_gets_no_share_and_one_that_helps_does() -> None:
    labels = np.repeat(np.arange(12), 3)
    half = np.arange(12) < 6
    lexical = _sims(labels, half, 0)  # the lexical channel sees half of the clusters
    useless = np.random.default_rng(1).uniform(0, 1, size=lexical.shape)
    w, table = channel_weight.choose_weight({"a": ((useless + useless.T) / 2, lexical, labels)}, np.linspace(0, 1, 11))
    assert w == 1.0 and table["a"]["mixed"] == table["a"]["lexical"]  # noise: lexical alone
    helpful = _sims(labels, ~half, 2)  # the contextual channel sees the other half
    w, table = channel_weight.choose_weight({"a": (helpful, lexical, labels), "b": (helpful, lexical, labels)},
                                            np.linspace(0, 1, 11))
    assert 0.0 < w < 1.0
    assert table["a"]["mixed"] > max(table["a"]["lexical"], table["a"]["contextual"]) + 0.02


def test_main_runs_and_writes_the_weighted_model(tmp_path: Path, one_thread) -> None:
    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta"]
    rng = np.random.default_rng(0)
    base = [" ".join(rng.choice(words, size=80)) for _ in range(6)]
    texts = [t for b in base for t in (b, b + " coda")]
    pq.write_table(pa.table({"id": [f"d{i}" for i in range(12)], "text": texts,
                             "cluster": [str(i // 2) for i in range(12)]}), tmp_path / "dev.parquet")
    config = ReformerConfig(d_model=32, n_layers=2, n_heads=2, d_ff=64, embedding_dim=24, chunk_size=16,
                            max_len=4096, axial_pos_shape=(64, 64), ngram_size=3, ngram_buckets=1024, ngram_dim=16,
                            ngram_weight=0.5, ngram_tf="log", ngram_projection="sketch")
    torch.manual_seed(0)
    ReformerEncoder(config).save_pretrained(tmp_path / "model")
    rc = channel_weight.main(["--data", str(tmp_path / "dev.parquet"), "--model", str(tmp_path / "model"),
                              "--step", "0.25", "--json", str(tmp_path / "w.json"), "--write", str(tmp_path / "out")])
    assert rc == 0
    result = json.loads((tmp_path / "w.json").read_text())
    assert result["chosen_lexical_share"] in (0.0, 0.25, 0.5, 0.75, 1.0)
    assert set(result["sets"]) == {"dev clean", "dev noisy"}
    if 0 < result["chosen_lexical_share"] < 1:
        assert load_model(tmp_path / "out").config.ngram_weight == result["chosen_lexical_share"]
