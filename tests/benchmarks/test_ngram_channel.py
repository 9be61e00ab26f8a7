"""benchmarks/ngram_channel.py: row parsing, exact vs sketched cosines, and the whole run on tiny data."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import ngram_channel

from reformer_retrieval.tokenizer import ByteTokenizer


def _docs() -> list[str]:
    rng = np.random.default_rng(0)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocab = ["".join(rng.choice(letters, 6)) for _ in range(2000)]
    bases = [" ".join(rng.choice(vocab, 300)) for _ in range(4)]
    return [b for base in bases for b in (base, base[: len(base) * 3 // 4] + " tail words here")]


def test_rows_parse_and_name_a_bad_row() -> None:
    spec = ngram_channel.ChannelSpec.parse("6/log/1048576/1024/1/sketch")
    assert (spec.n, spec.tf, spec.buckets, spec.dim, spec.power, spec.projection) == (6, "log", 1 << 20, 1024, 1.0, "sketch")
    assert "exact" in str(ngram_channel.ChannelSpec.parse("5/raw/65536/0/2/sketch"))
    with pytest.raises(ValueError, match="'6/log/8'"):
        ngram_channel.ChannelSpec.parse("6/log/8")
    with pytest.raises(ValueError, match="'x/log/8/8/1/sketch'"):
        ngram_channel.ChannelSpec.parse("x/log/8/8/1/sketch")


def test_sketch_cosines_estimate_the_exact_ones() -> None:
    tok = ByteTokenizer(normalization="NFKC", lowercase=True, collapse_whitespace=True)
    ids = [tok.encode(t)[0] for t in _docs()]
    exact = ngram_channel.channel_similarity(ngram_channel.ChannelSpec(4, "log", 1 << 20, 0, 1.0, "sketch"), ids, ids)
    sketch = ngram_channel.channel_similarity(ngram_channel.ChannelSpec(4, "log", 1 << 20, 4096, 1.0, "sketch"), ids, ids)
    assert np.allclose(np.diag(exact), 1.0, atol=1e-5)
    assert np.abs(exact - sketch).max() < 0.08  # the sketch's error shrinks as 1 / sqrt(dim)
    assert exact[0, 1] > 0.5 > exact[0, 2]  # a document and its cut copy vs another document


def test_main_writes_the_table(tmp_path: Path) -> None:
    docs = _docs()
    data = tmp_path / "labelled.parquet"
    pq.write_table(pa.table({"id": [str(i) for i in range(8)], "text": docs, "cluster": [str(i // 2) for i in range(8)]}), data)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    pq.write_table(pa.table({"id": ["a", "b"], "text": docs[:2]}), corpus / "train-00000.parquet")
    out = tmp_path / "rows.json"
    argv = ["--data", str(data), "--corpus", str(corpus), "--rows", "4/binary/4096/0/1/sketch,4/log/4096/64/1/table"]
    assert ngram_channel.main([*argv, "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["row"] for r in rows] == ["MinHash", "4/binary/4096/0/1/sketch", "4/log/4096/64/1/table"]
    assert all(0.5 <= r["clean_roc_auc"] <= 1.0 and 0.0 < r["noisy_best_f1"] <= 1.0 for r in rows)
    assert rows[1]["clean_best_f1"] == 1.0  # each document's cut copy is its nearest, exactly
    assert ngram_channel.main([*argv[:4], "--rows", "4/sqrt/4096/0/1/sketch"]) == 2
    assert ngram_channel.main(["--data", str(data), "--corpus", str(tmp_path / "none")]) == 2
