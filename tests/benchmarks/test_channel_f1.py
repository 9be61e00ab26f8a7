"""benchmarks/channel_f1.py: each channel's best F1 on labelled files, as the channel-only encoders score it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import channel_f1

from reformer_retrieval import ReformerConfig, ReformerEncoder
from reformer_retrieval.encode import Encoder
from reformer_retrieval.train import pair_metrics


def test_channel_rows_match_the_channel_encoders(tmp_path: Path, one_thread, capsys) -> None:
    config = ReformerConfig(d_model=32, n_layers=2, n_heads=2, d_ff=64, embedding_dim=24, chunk_size=16,
                            max_len=4096, axial_pos_shape=(64, 64), ngram_size=3, ngram_buckets=512, ngram_dim=8,
                            ngram_weight=0.5)
    torch.manual_seed(0)
    model_dir = ReformerEncoder(config).save_pretrained(tmp_path / "model")
    rng = np.random.default_rng(0)
    texts, clusters = [], []
    for c in range(5):
        base = " ".join(f"w{int(w)}" for w in rng.integers(0, 300, size=60))
        for v in range(3):
            texts.append(base.replace(f"w{v}", "edit") + f" v{v}")
            clusters.append(f"c{c}")
    data = tmp_path / "labelled.parquet"
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(15)], "text": texts, "cluster": clusters}), data)
    assert channel_f1.main(["--model", str(model_dir), "--data", str(data), "--device", "cpu",
                            "--json", str(tmp_path / "f1.json")]) == 0
    rows = json.loads((tmp_path / "f1.json").read_text())["rows"]
    assert [r["channel"] for r in rows] == ["both", "contextual", "lexical"]
    for row in rows:
        emb = Encoder.load(model_dir, device="cpu", dtype="float32", channels=row["channel"]).encode(texts)
        expected = pair_metrics(emb @ emb.T, np.asarray(clusters))
        assert abs(row["best_f1"] - expected["best_f1"]) < 1e-6 and abs(row["roc_auc"] - expected["roc_auc"]) < 1e-6
    assert "| labelled.parquet | contextual |" in capsys.readouterr().out
    assert channel_f1.main(["--model", str(model_dir), "--data", str(data), "--device", "cpu", "--max-clusters", "2",
                            "--json", str(tmp_path / "f2.json")]) == 0
    assert {r["n_docs"] for r in json.loads((tmp_path / "f2.json").read_text())["rows"]} == {6}
    assert channel_f1.main(["--data", str(tmp_path / "missing.parquet")]) == 2
