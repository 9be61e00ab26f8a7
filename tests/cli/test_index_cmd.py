"""``reformer-retrieval index build | add | info``."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from reformer_retrieval.cli.main import cli
from reformer_retrieval.indexes import open_index, set_threads

from reformer_retrieval.corpus import write_embeddings


@pytest.fixture(autouse=True)
def _one_thread():
    before = set_threads(None)
    set_threads(1)
    yield
    set_threads(before)


def _emb(path, n=300, dim=16, model_id="aaaaaaaaaaaa", seed=0, start=0):
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = [f"d{i}" for i in range(start, start + n)]
    write_embeddings(path, ids, x, np.full(n, 10), np.zeros(n, bool), model_id)
    return path, x, ids


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq", "lsh"])
def test_build_add_info(tmp_path, kind):
    emb, _, _ = _emb(tmp_path / "e.parquet")
    runner = CliRunner()
    extra = ["--nbits", "2"] if kind == "ivfpq" else []  # 300 vectors train 2-bit codes (39 x 4 <= 300)
    out = runner.invoke(cli, ["index", "build", str(emb), "-o", str(tmp_path / "idx"), "--kind", kind, "--threads", "1",
                              *extra])
    assert out.exit_code == 0, out.output
    assert f"built a {kind} index of 300 entries (dim 16, model aaaaaaaaaaaa)" in out.output
    more, _, _ = _emb(tmp_path / "m.parquet", n=50, seed=1, start=300)
    out = runner.invoke(cli, ["index", "add", str(tmp_path / "idx"), str(more)])
    assert out.exit_code == 0, out.output
    assert "added 50 entries" in out.output and "now 350" in out.output
    assert open_index(tmp_path / "idx").count == 350
    out = runner.invoke(cli, ["index", "info", str(tmp_path / "idx")])
    assert out.exit_code == 0 and f"{kind} index, 350 entries, dim 16" in out.output
    out = runner.invoke(cli, ["index", "info", str(tmp_path / "idx"), "--json"])
    assert json.loads(out.output)["count"] == 350


def test_build_options_reach_the_backend(tmp_path):
    emb, _, _ = _emb(tmp_path / "e.parquet")
    runner = CliRunner()
    out = runner.invoke(cli, ["index", "build", str(emb), "-o", str(tmp_path / "h"), "--kind", "hnsw", "--m", "8",
                              "--ef-search", "77"])
    assert out.exit_code == 0, out.output
    assert open_index(tmp_path / "h").parameters == {"m": 8, "ef_construction": 80, "ef_search": 77}
    out = runner.invoke(cli, ["index", "build", str(emb), "-o", str(tmp_path / "l"), "--kind", "lsh", "--tables", "4",
                              "--bits", "8", "--nflip", "2", "--seed", "5"])
    assert out.exit_code == 0, out.output
    assert open_index(tmp_path / "l").parameters == {"n_tables": 4, "bits_per_table": 8, "nflip": 2, "seed": 5,
                                                     "threshold": None, "recall": 0.99}


def test_add_from_another_model_is_refused(tmp_path):
    emb, _, _ = _emb(tmp_path / "e.parquet")
    other, _, _ = _emb(tmp_path / "o.parquet", n=5, seed=2, model_id="bbbbbbbbbbbb", start=900)
    runner = CliRunner()
    assert runner.invoke(cli, ["index", "build", str(emb), "-o", str(tmp_path / "idx")]).exit_code == 0
    out = runner.invoke(cli, ["index", "add", str(tmp_path / "idx"), str(other)])
    assert out.exit_code != 0
    assert "aaaaaaaaaaaa" in out.output and "bbbbbbbbbbbb" in out.output
    assert open_index(tmp_path / "idx").count == 300


def test_minhash_index_from_corpus(tmp_path):
    corpus = tmp_path / "c.parquet"
    texts = ["alpha beta gamma delta epsilon", "alpha beta gamma delta zeta", "one two three four", None]
    pq.write_table(pa.table({"id": ["a", "b", "c", "d"], "text": texts}), corpus)
    runner = CliRunner()
    out = runner.invoke(cli, ["index", "build", str(corpus), "-o", str(tmp_path / "mh"), "--kind", "minhash",
                              "--threshold", "0.3", "-q"])
    assert out.exit_code == 0, out.output
    assert "3 entries" in out.output and "skipped 1 rows" in out.output
    index = open_index(tmp_path / "mh")
    assert index.kind == "minhash" and index.threshold == 0.3


def test_one_line_errors(tmp_path):
    runner = CliRunner()
    corpus = tmp_path / "c.parquet"
    pq.write_table(pa.table({"id": ["a"], "text": ["x"]}), corpus)
    out = runner.invoke(cli, ["index", "build", str(corpus), "-o", str(tmp_path / "i")])
    assert out.exit_code == 2 and "not an embeddings file" in out.output
    out = runner.invoke(cli, ["index", "info", str(tmp_path / "nope")])
    assert out.exit_code == 1 and "Error: no index directory" in out.output and "Traceback" not in out.output
    emb, _, _ = _emb(tmp_path / "e.parquet")
    assert runner.invoke(cli, ["index", "build", str(emb), "-o", str(tmp_path / "i2")]).exit_code == 0
    out = runner.invoke(cli, ["index", "build", str(emb), "-o", str(tmp_path / "i2")])
    assert out.exit_code == 1 and "--overwrite" in out.output
    assert runner.invoke(cli, ["index", "build", str(emb), "-o", str(tmp_path / "i2"), "--overwrite"]).exit_code == 0


def test_lsh_threshold_derives_or_refuses(tmp_path):
    emb, _, _ = _emb(tmp_path / "e.parquet")
    runner = CliRunner()
    out = runner.invoke(cli, ["index", "build", str(emb), "-o", str(tmp_path / "l"), "--kind", "lsh",
                              "--threshold", "0.41"])
    assert out.exit_code == 0, out.output
    index = open_index(tmp_path / "l")
    assert index.parameters["threshold"] == 0.41 and index.recall_at(0.41) >= 0.99
    # the old defaults find a pair at 0.41 with probability 0.055: refused, the recall named
    out = runner.invoke(cli, ["index", "build", str(emb), "-o", str(tmp_path / "l2"), "--kind", "lsh",
                              "--threshold", "0.41", "--tables", "8", "--bits", "16", "--nflip", "1"])
    assert out.exit_code == 1 and "probability 0.055" in out.output and "Traceback" not in out.output
    assert not (tmp_path / "l2").exists()


def test_info_verify_reads_checksums(tmp_path):
    emb, _, _ = _emb(tmp_path / "e.parquet")
    runner = CliRunner()
    assert runner.invoke(cli, ["index", "build", str(emb), "-o", str(tmp_path / "i")]).exit_code == 0
    out = runner.invoke(cli, ["index", "info", str(tmp_path / "i"), "--verify"])
    assert out.exit_code == 0 and "SHA-256 checksums verified" in out.output
    path = tmp_path / "i" / "index.faiss"
    data = bytearray(path.read_bytes())
    data[-9] ^= 0xFF  # same size, different bytes
    path.write_bytes(bytes(data))
    out = runner.invoke(cli, ["index", "info", str(tmp_path / "i")])
    assert out.exit_code == 0 and "sizes checked" in out.output
    out = runner.invoke(cli, ["index", "info", str(tmp_path / "i"), "--verify"])
    assert out.exit_code == 1 and "does not match the SHA-256" in out.output and "Traceback" not in out.output


def test_build_from_a_missing_file_says_it_does_not_exist(tmp_path):
    missing = tmp_path / "missing.parquet"
    out = CliRunner().invoke(cli, ["index", "build", str(missing), "-o", str(tmp_path / "i")])
    assert out.exit_code == 1 and out.output.strip() == f"Error: {missing}: no such file"
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("{\"id\": \"a\", \"text\": \"some text here\"}\n{\"id\": \"b\", \"text\": \"other words\"}\n")
    out = CliRunner().invoke(cli, ["index", "build", str(jsonl), "-o", str(tmp_path / "m"), "--kind", "minhash", "-q"])
    assert out.exit_code == 0 and "built a minhash index of 2 entries" in out.output


def test_ivfpq_too_few_vectors_is_a_one_line_error(tmp_path):
    emb, _, _ = _emb(tmp_path / "e.parquet")
    out = CliRunner().invoke(cli, ["index", "build", str(emb), "-o", str(tmp_path / "i"), "--kind", "ivfpq"])
    assert out.exit_code == 1 and "Traceback" not in out.output
    assert "needs at least 9,984 training vectors" in out.output and "nbits=2 fits 300" in out.output
