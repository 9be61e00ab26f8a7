"""``reformer-retrieval encode``: options, summary, one-line errors, Ctrl-C then --resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from reformer_retrieval.cli.main import cli

from reformer_retrieval.corpus import read_embeddings, read_skipped
from reformer_retrieval.encode import Encoder, parts_dir_for

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.parquet"
    texts = [f"document {i} " + "some words here " * (i * 3 + 1) for i in range(8)]
    pq.write_table(pa.table({"doc_id": [*range(8), 99], "body": [*texts, None]}), path)
    return path, texts


def _run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_help_lists_verb_and_shows_example():
    top = _run("--help")
    assert top.exit_code == 0 and "encode" in top.output
    res = _run("encode", "--help")
    assert res.exit_code == 0
    assert "reformer-retrieval encode examples/sample.parquet -o emb.parquet" in res.output
    for option in ("--model", "--id-column", "--text-column", "--device", "--batch-tokens", "--max-tokens",
                   "--long-docs", "--resume"):
        assert option in res.output


def test_encode_writes_embeddings_and_summary(tmp_path, tiny_dir, corpus):
    src, texts = corpus
    dst = tmp_path / "emb.parquet"
    res = _run("encode", str(src), "-o", str(dst), "--model", str(tiny_dir), "--id-column", "doc_id",
               "--text-column", "body", "--device", "cpu", "--max-tokens", "64", "--batch-tokens", "512", "-q")
    assert res.exit_code == 0, res.output
    table = read_embeddings(dst)
    assert table.ids == list(range(8)) and table.vectors.shape == (8, 16)
    expected = Encoder.load(tiny_dir, device="cpu", max_tokens=64).encode(texts)
    assert np.abs(table.vectors - expected).max() < 1e-5
    n_trunc = int(table.truncated.sum())
    assert n_trunc > 0
    assert "encoded 8 documents" in res.output
    assert "skipped 1 rows (1 null text)" in res.output
    assert f"truncated {n_trunc} documents longer than max_tokens=64" in res.output
    assert [(s.id, s.reason) for s in read_skipped(tmp_path / "emb.skipped.parquet")] == [(99, "null text")]


def test_window_mode_reads_everything(tmp_path, tiny_dir, corpus):
    src, texts = corpus
    dst = tmp_path / "emb.parquet"
    res = _run("encode", str(src), "-o", str(dst), "--model", str(tiny_dir), "--id-column", "doc_id",
               "--text-column", "body", "--max-tokens", "64", "--long-docs", "window", "-q")
    assert res.exit_code == 0, res.output
    table = read_embeddings(dst)
    assert not table.truncated.any() and table.n_tokens.tolist() == [len(t.encode()) for t in texts]
    assert "truncated 0 documents" in res.output


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda p: pq.write_table(pa.table({"id": ["a"], "body": ["t"]}), p), "no text column 'text'; the file has"),
        (lambda p: p.write_text("id,text\na,b\n"), "not a readable Parquet file"),
        (lambda p: pq.write_table(pa.table({"id": ["a", "a"], "text": ["x", "y"]}), p),
         "duplicate id 'a'"),
        (lambda p: pq.write_table(pa.table({"id": ["a", "a"], "text": ["x", "y"]}), p),
         "(ids must be unique; keep the first with --on-duplicate keep_first)"),
    ],
)
def test_errors_are_one_line(tmp_path, tiny_dir, make, needle):
    src = tmp_path / "c.parquet"
    make(src)
    res = _run("encode", str(src), "-o", str(tmp_path / "e.parquet"), "--model", str(tiny_dir), "-q")
    assert res.exit_code == 1
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and needle in lines[0]
    assert "Traceback" not in res.output and not (tmp_path / "e.parquet").exists()


@pytest.mark.parametrize(
    ("name", "data", "extra"),
    [
        ("c.jsonl", b"".join(b'{"doc": {"id": %d}, "body": "text number %d and some words"}\n' % (i, i) for i in range(5)),
         ["--id-column", "doc.id", "--text-column", "body"]),
        ("c.csv", b"id,text\n" + b"".join(b'%03d,"text number %d, and some words"\n' % (i, i) for i in range(5)), []),
    ],
)
def test_encode_json_lines_and_csv(tmp_path, tiny_dir, name, data, extra):
    src = tmp_path / name
    src.write_bytes(data)
    dst = tmp_path / "emb.parquet"
    res = _run("encode", str(src), "-o", str(dst), "--model", str(tiny_dir), "--device", "cpu", "-q", *extra)
    assert res.exit_code == 0, res.output
    table = read_embeddings(dst)
    assert table.ids == (list(range(5)) if name.endswith(".jsonl") else [f"{i:03d}" for i in range(5)])
    sep = "," if name.endswith(".csv") else ""
    expected = Encoder.load(tiny_dir, device="cpu").encode([f"text number {i}{sep} and some words" for i in range(5)])
    assert np.abs(table.vectors - expected).max() < 1e-5 and "encoded 5 documents" in res.output


def test_unreadable_format_is_one_line(tmp_path, tiny_dir):
    src = tmp_path / "corpus.txt"
    src.write_text("one document per line\nanother\n")
    res = _run("encode", str(src), "-o", str(tmp_path / "e.parquet"), "--model", str(tiny_dir), "-q")
    assert res.exit_code == 1
    assert res.output.strip() == f"Error: only Parquet, JSON Lines and CSV are read: {src} looks like plain text (.txt)"


def test_missing_model_and_bad_device(tmp_path, corpus):
    src, _ = corpus
    res = _run("encode", str(src), "-o", str(tmp_path / "e.parquet"), "--model", str(tmp_path / "nope"))
    assert res.exit_code != 0 and "nope" in res.output and "Traceback" not in res.output
    if not torch.cuda.is_available():
        res = _run("encode", str(src), "-o", str(tmp_path / "e.parquet"), "--device", "cuda")
        assert res.exit_code == 1 and "CUDA is not available" in res.output


_CHILD = textwrap.dedent(
    """
    import signal, sys, time
    # A shell started in the background ignores SIGINT and its children inherit that; a terminal user's
    # process gets Python's KeyboardInterrupt handler, which is what this test simulates.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from reformer_retrieval.encode import Encoder
    from reformer_retrieval.cli.main import cli
    original = Encoder._launch
    def slow(self, segments):  # throttled so that the parent can interrupt it part-way
        time.sleep(0.5)
        return original(self, segments)
    Encoder._launch = slow
    cli.main(sys.argv[1:], prog_name="reformer-retrieval")
    """
)


@pytest.mark.slow
def test_ctrl_c_leaves_a_resumable_state(tmp_path, tiny_dir):
    src = tmp_path / "corpus.parquet"
    texts = [f"text {i} " * (5 + i % 7) for i in range(30)]
    pq.write_table(pa.table({"id": [f"d{i}" for i in range(30)], "text": texts}), src)
    dst = tmp_path / "emb.parquet"
    ref = tmp_path / "ref.parquet"
    common = ["--model", str(tiny_dir), "--device", "cpu", "--batch-tokens", "64", "-q"]
    assert _run("encode", str(src), "-o", str(ref), *common).exit_code == 0

    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(script), "encode", str(src), "-o", str(dst), *common,
                             "--part-docs", "3"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    parts = parts_dir_for(dst)
    deadline = time.time() + 120
    while time.time() < deadline and not (parts / "part-00001.parquet").exists():
        time.sleep(0.01)
    assert proc.poll() is None, "the encode finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert "interrupted" in err and "--resume" in err and "Traceback" not in err
    assert not dst.exists() and (parts / "part-00001.parquet").is_file()

    again = _run("encode", str(src), "-o", str(dst), *common, "--part-docs", "3")
    assert again.exit_code == 1 and "--resume" in again.output
    resumed = _run("encode", str(src), "-o", str(dst), *common, "--part-docs", "3", "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "resumed: reused 2 part(s) of an earlier run (6 documents); encoded the other 24 now" in resumed.output
    a, b = read_embeddings(ref), read_embeddings(dst)
    assert a.ids == b.ids and np.array_equal(a.vectors, b.vectors)
    assert not parts.exists()


def test_encode_on_ray_matches_the_local_engine(tmp_path, corpus, tiny_dir):
    pytest.importorskip("ray.data", reason="the ray extra is not installed: pip install 'reformer-retrieval[ray]'")
    import ray

    corpus, _ = corpus
    common = ["--model", str(tiny_dir), "--device", "cpu", "--id-column", "doc_id", "--text-column", "body", "-q"]
    try:
        res = CliRunner().invoke(cli, ["encode", str(corpus), "-o", str(tmp_path / "ray.parquet"), "--engine", "ray",
                                       "--actors", "1", *common])
    finally:
        ray.shutdown()
    assert res.exit_code == 0, res.output
    assert "encoded 8 documents" in res.output and "1 row skipped (1 null text)" in res.output
    local = CliRunner().invoke(cli, ["encode", str(corpus), "-o", str(tmp_path / "local.parquet"), *common])
    assert local.exit_code == 0, local.output
    got, want = read_embeddings(tmp_path / "ray.parquet"), read_embeddings(tmp_path / "local.parquet")
    assert got.ids == want.ids == list(range(8)) and got.model_id == want.model_id
    np.testing.assert_allclose(got.vectors, want.vectors, atol=1e-6)
    assert np.array_equal(got.n_tokens, want.n_tokens) and np.array_equal(got.truncated, want.truncated)
    assert [(r.id, r.reason) for r in read_skipped(tmp_path / "ray.skipped.parquet")] == [(99, "null text")]
