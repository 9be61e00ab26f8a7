"""benchmarks/model_quality.py --write-noisy: the noisy copy it scores, written for encoding elsewhere."""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import model_quality

from reformer_retrieval.train import augment


def test_write_noisy_matches_the_scored_copy(tmp_path: Path) -> None:
    texts = ["the quick brown fox jumps over the lazy dog " * 20, "a second document about something else " * 15]
    src = tmp_path / "labelled.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "text": texts, "cluster": ["x", "y"]}), src)
    out = tmp_path / "noisy.parquet"
    assert model_quality.main(["--data", str(src), "--write-noisy", str(out), "--noise-seed", "3"]) == 0
    table = pq.read_table(out).to_pydict()
    assert table["id"] == ["a", "b"] and table["cluster"] == ["x", "y"]
    assert table["text"] == [augment(t, 0.5, seed=(3, r), preset="ocr") for r, t in enumerate(texts)]
    assert table["text"] != texts
