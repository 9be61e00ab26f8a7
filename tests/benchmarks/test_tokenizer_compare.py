"""benchmarks/tokenizer_compare.py on tiny data: token counts, the BPE ratio, and n-gram survival under noise."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("tokenizers")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import tokenizer_compare

from reformer_retrieval.tokenizer import ByteTokenizer


def _texts(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    words = ["contract", "section", "the", "shall", "provide", "notice", "within", "days", "party", "agreement"]
    return [" ".join(rng.choice(words, 400)).capitalize() + "." for _ in range(n)]


def _write(path: Path, texts: list[str]) -> Path:
    pq.write_table(pa.table({"id": [f"d{i}" for i in range(len(texts))], "text": texts}), path)
    return path


def _run(tmp_path: Path, strength: float) -> list[dict]:
    corpus = _write(tmp_path / "corpus.parquet", _texts(12, 0))
    labelled = _write(tmp_path / "labelled.parquet", [*_texts(5, 1), ""])  # the empty text is left out
    out = tmp_path / f"rows_{strength}.json"
    assert tokenizer_compare.main([str(corpus), str(labelled), "--vocab", "300", "--train-bytes", "20000",
                                   "--noise-strength", str(strength), "--json", str(out)]) == 0
    return json.loads(out.read_text())["rows"]


def test_counts_ratio_and_survival(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = _run(tmp_path, 0.5)
    assert "5 documents of" in capsys.readouterr().out
    byte_row, bpe_row = rows
    tok = ByteTokenizer(normalization="NFKC", lowercase=True, collapse_whitespace=True)
    expected = np.mean([len(tok.normalize(t).encode()) for t in _texts(5, 1)])
    assert byte_row["tokens_per_doc_clean"] == pytest.approx(expected)
    assert byte_row["bytes_per_token_clean"] == 1.0
    # a 300-entry vocabulary learned on the same ten words merges them: far fewer tokens than bytes
    assert bpe_row["bytes_per_token_clean"] > 2.0
    assert bpe_row["tokens_per_doc_clean"] * bpe_row["bytes_per_token_clean"] == pytest.approx(expected)
    assert byte_row["gram_n"] == round(4 * bpe_row["bytes_per_token_clean"])
    for row in rows:
        assert 0.0 < row["gram_survival"] < 1.0  # OCR noise breaks some n-grams, not all


def test_no_noise_keeps_every_ngram(tmp_path: Path) -> None:
    for row in _run(tmp_path, 0.0):
        assert row["gram_survival"] == 1.0
        assert row["tokens_per_doc_clean"] == row["tokens_per_doc_noisy"]
