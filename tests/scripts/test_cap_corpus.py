"""scripts/cap_corpus.py: every shard's documents, texts cut to N characters, one atomic Parquet file."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "cap_corpus.py"


def _load():
    spec = importlib.util.spec_from_file_location("cap_corpus", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cap_corpus_cuts_texts_and_keeps_every_document(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    pq.write_table(pa.table({"id": ["a", "b"], "text": ["é" * 10, "short"], "extra": [1, 2]}), corpus / "train-00000.parquet")
    pq.write_table(pa.table({"id": ["c"], "text": ["x" * 3]}), corpus / "train-00001.parquet")
    out = tmp_path / "out" / "capped.parquet"
    assert _load().cap_corpus(corpus, out, max_chars=4) == 3
    table = pq.read_table(out)
    assert table.column_names == ["id", "text"]
    assert table.column("id").to_pylist() == ["a", "b", "c"]
    assert table.column("text").to_pylist() == ["éééé", "shor", "xxx"]  # characters, not bytes
    assert not list(out.parent.glob("*.tmp"))
