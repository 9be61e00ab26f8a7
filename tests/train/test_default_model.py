"""The shipped default model: it loads, matches the ``model_id`` its ``training.json`` records, and ranks a
noisy copy of a real document above the other documents."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from reformer_retrieval.checkpoint import read_training
from reformer_retrieval.encode import DEFAULT_MODEL_DIR, Encoder
from reformer_retrieval.train import augment

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sample.parquet"


def test_default_model_id_is_the_recorded_one() -> None:
    record = read_training(DEFAULT_MODEL_DIR)
    if "model_id" not in record:
        pytest.skip(f"{DEFAULT_MODEL_DIR}/training.json records no model_id (not a trained model)")
    encoder = Encoder.load(device="cpu")
    assert encoder.model_id == record["model_id"]
    assert record["steps"]["done"] > 0 and record["data"]["n_documents"] > 0


@pytest.mark.slow
def test_default_model_ranks_a_noisy_copy_first() -> None:
    if not SAMPLE.is_file():
        pytest.skip("examples/sample.parquet is absent")
    table = pq.read_table(SAMPLE, columns=["text", "variant"]).to_pylist()
    texts = [row["text"][:800] for row in table if row["variant"] == "original"][:6]
    copies = [augment(t, 0.5, seed=(7, i), preset="ocr") for i, t in enumerate(texts[:3])]
    encoder = Encoder.load(device="cpu", batch_tokens=8192)
    emb = encoder.encode(texts + copies)
    originals, noisy = emb[: len(texts)], emb[len(texts) :]
    ranks = np.argmax(noisy @ originals.T, axis=1)
    assert ranks.tolist() == list(range(len(copies)))
