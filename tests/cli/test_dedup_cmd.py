"""``reformer-retrieval dedup``: end to end from a corpus (tiny model), from embeddings, MinHash."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.csv
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from reformer_retrieval.cli.main import cli
from reformer_retrieval.indexes import set_threads

from reformer_retrieval.corpus import write_embeddings

STORY = ("The quick brown fox jumps over the lazy dog near the river bank in the morning light, while the farmer "
         "counts his sheep, the baker opens the shop and children walk to school along the old stone bridge.")


@pytest.fixture(autouse=True)
def _one_thread():
    before, tb = set_threads(None), torch.get_num_threads()
    set_threads(1)
    torch.set_num_threads(1)
    yield
    set_threads(before)
    torch.set_num_threads(tb)


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.parquet"
    texts = [STORY, "Quantum chromodynamics describes quarks and gluons.", STORY,
             STORY.replace("jumps", "jumped"), "Zebras graze on the savanna while lions rest.", ""]
    pq.write_table(pa.table({"id": [f"doc-{i}" for i in range(6)], "text": texts}), path)
    return path


def test_dedup_corpus_end_to_end(tmp_path, corpus, tiny_dir):
    model = tiny_dir
    out_dir = tmp_path / "out"
    res = CliRunner().invoke(cli, ["dedup", str(corpus), "-o", str(out_dir), "--model", str(model), "--device", "cpu",
                                   "--method", "hybrid", "--threshold", "0.9999", "--minhash-threshold", "0.5", "-q"])
    assert res.exit_code == 0, res.output
    assert "5 documents -> 3 clusters (1 with duplicates)" in res.output
    assert "[3] " in res.output and "doc-0" in res.output
    clusters = pq.read_table(out_dir / "clusters.parquet")
    assert sorted(clusters.column("id").to_pylist()) == [f"doc-{i}" for i in range(5)]
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["method"] == "hybrid" and summary["skipped_rows"] == 1
    assert (out_dir / "embeddings.parquet").is_file()
    written = sorted(p.name for p in out_dir.iterdir())
    assert written == ["clusters.parquet", "embeddings.parquet", "embeddings.skipped.parquet", "pairs.parquet",
                       "skipped.parquet", "summary.json"]
    assert f"wrote 6 file(s) in {out_dir}:" in res.output
    assert all(f"  {name} (" in res.output for name in written)


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_dedup_reads_json_lines_and_csv(tmp_path, tiny_dir, fmt):
    texts = [STORY, "Quantum chromodynamics describes quarks and gluons.", STORY]
    src = tmp_path / f"corpus.{fmt}"
    if fmt == "jsonl":
        src.write_text("".join(json.dumps({"meta": {"id": f"d{i}"}, "body": t}) + "\n" for i, t in enumerate(texts)))
        columns = ["--id-column", "meta.id", "--text-column", "body"]
    else:
        pa.csv.write_csv(pa.table({"id": [f"d{i}" for i in range(3)], "text": texts}), src)
        columns = []
    out_dir = tmp_path / "out"
    res = CliRunner().invoke(cli, ["dedup", str(src), "-o", str(out_dir), "--model", str(tiny_dir), "--device", "cpu",
                                   "--threshold", "0.9999", "-q", *columns])
    assert res.exit_code == 0, res.output
    assert "3 documents -> 2 clusters (1 with duplicates)" in res.output
    clusters = pq.read_table(out_dir / "clusters.parquet").to_pydict()
    assert clusters["id"] == ["d0", "d1", "d2"] and clusters["cluster_id"][0] == clusters["cluster_id"][2]
    rerun = CliRunner().invoke(cli, ["dedup", str(out_dir / "embeddings.parquet"), "-o", str(tmp_path / "again"),
                                     "--threshold", "0.9999", "-q"])
    assert rerun.exit_code == 0 and "wrote 3 file(s)" in rerun.output


def test_dedup_minhash_needs_no_model(tmp_path, corpus):
    res = CliRunner().invoke(cli, ["dedup", str(corpus), "-o", str(tmp_path / "o"), "--method", "minhash",
                                   "--threshold", "0.5", "-q", "--show", "0"])
    assert res.exit_code == 0, res.output
    assert "jaccard >= 0.5" in res.output and "largest clusters" not in res.output
    pairs = pq.read_table(tmp_path / "o" / "pairs.parquet")
    assert set(pairs.column("method").to_pylist()) == {"minhash"}
    assert pairs.num_rows == 3  # doc-0, doc-2, doc-3: every pair verified


def test_dedup_from_embeddings(tmp_path, corpus):
    x = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    x[3] = x[1]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    emb = tmp_path / "e.parquet"
    write_embeddings(emb, [f"doc-{i}" for i in range(5)], x, np.arange(5) + 1, np.zeros(5, bool), "cccccccccccc")
    res = CliRunner().invoke(cli, ["dedup", str(emb), "-o", str(tmp_path / "o"), "--threshold", "0.99",
                                   "--index", "hnsw", "-q"])
    assert res.exit_code == 0, res.output
    assert "[2] doc-3, doc-1" in res.output  # keep longest: doc-3 has more tokens
    res = CliRunner().invoke(cli, ["dedup", str(emb), "-o", str(tmp_path / "o2"), "--method", "minhash", "-q"])
    assert res.exit_code == 1 and "--corpus" in res.output
    res = CliRunner().invoke(cli, ["dedup", str(emb), "-o", str(tmp_path / "o3"), "--method", "hybrid",
                                   "--corpus", str(corpus), "--threshold", "0.99", "--minhash-threshold", "0.5", "-q"])
    assert res.exit_code == 0, res.output
    assert "5 documents -> 2 clusters" in res.output


def test_bad_input_one_line_error(tmp_path):
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"ident": ["a"], "text": ["x"]}), bad)
    res = CliRunner().invoke(cli, ["dedup", str(bad), "-o", str(tmp_path / "o"), "--method", "minhash"])
    assert res.exit_code == 1 and "Error:" in res.output and "'id'" in res.output
    assert "Traceback" not in res.output


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_dedup_staged_engines_match_memory(tmp_path, corpus, engine):
    if engine == "ray":
        pytest.importorskip("ray.data", reason="the ray extra is not installed: pip install 'reformer-retrieval[ray]'")
    args = ["dedup", str(corpus), "--method", "minhash", "--threshold", "0.5", "-q"]
    mem = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "mem")])
    staged = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / engine), "--engine", engine,
                                      *(["--components", "rounds"] if engine == "ray" else [])])
    assert mem.exit_code == 0 and staged.exit_code == 0, staged.output
    assert "5 documents -> 3 clusters (1 with duplicates)" in staged.output
    clusters = [pq.read_table(tmp_path / d / "clusters.parquet") for d in ("mem", engine)]
    assert clusters[0].equals(clusters[1])
    # the bucket {doc-0, doc-2, doc-3}: star (0-2, 0-3) + path (2-3) edges are all its pairs here
    assert pq.read_table(tmp_path / engine / "pairs.parquet").equals(pq.read_table(tmp_path / "mem" / "pairs.parquet"))
    summary = json.loads((tmp_path / engine / "summary.json").read_text())
    assert summary["engine"] == engine and (tmp_path / engine / "stages" / "verify" / "_SUCCESS.json").is_file()
    assert summary["components"] == ("rounds" if engine == "ray" else "single")
    if engine == "ray":
        import ray

        ray.shutdown()


def test_dedup_staged_engine_needs_the_corpus_of_an_embeddings_input(tmp_path):
    x = np.eye(3, dtype=np.float32)
    emb = tmp_path / "e.parquet"
    write_embeddings(emb, ["a", "b", "c"], x, np.ones(3), np.zeros(3, bool), "cccccccccccc")
    res = CliRunner().invoke(cli, ["dedup", str(emb), "-o", str(tmp_path / "o"), "--engine", "local"])
    assert res.exit_code == 2 and "needs --corpus" in res.output


@pytest.mark.parametrize("method", ["embedding", "hybrid"])
def test_dedup_staged_engine_from_embeddings_equals_memory(tmp_path, corpus, method):
    """`dedup EMB --corpus C --engine local` takes the vectors from EMB (by id) and writes the memory engine's files."""
    x = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    x[3] = x[1]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    emb = tmp_path / "e.parquet"
    order = [4, 2, 0, 3, 1]  # the embeddings in another order than the corpus
    write_embeddings(emb, [f"doc-{i}" for i in order], x[order], np.array(order) + 1, np.zeros(5, bool),
                     "cccccccccccc")
    args = ["dedup", str(emb), "--corpus", str(corpus), "--method", method, "--threshold", "0.99",
            "--minhash-threshold", "0.5", "-q"]
    runs = {}
    for engine in ("memory", "local"):
        res = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / engine), "--engine", engine])
        assert res.exit_code == 0, res.output
        runs[engine] = res.output
    # The memory engine lists documents in the embeddings file's order, the staged one in the corpus's.
    def rows(engine: str, name: str, key: str) -> list[dict]:
        table = pq.read_table(tmp_path / engine / name)
        return sorted(table.drop_columns(["cluster_id"]).to_pylist() if "cluster_id" in table.column_names
                      else table.to_pylist(), key=lambda r: r[key])

    assert rows("local", "clusters.parquet", "id") == rows("memory", "clusters.parquet", "id")
    def pairs(engine: str) -> list[dict]:  # a pair's two ids in either order
        out = []
        for r in pq.read_table(tmp_path / engine / "pairs.parquet").to_pylist():
            a, b = sorted((r.pop("id_a"), r.pop("id_b")))
            out.append({"a": a, "b": b, **r})
        return sorted(out, key=lambda r: (r["a"], r["b"]))

    assert pairs("local") == pairs("memory") and len(pairs("local")) >= 1
    if method == "embedding":  # the one planted copy, doc-3 (more tokens) its representative
        assert "[2] doc-3, doc-1" in runs["local"]


def test_dedup_from_embeddings_takes_the_default_threshold_of_their_model(tmp_path, tiny_dir):
    """The default threshold comes from the model that made the embeddings, never from an unrelated one."""
    import json as _json

    from reformer_retrieval.dedup import model_id_of
    from reformer_retrieval.encode import DEFAULT_MODEL_DIR

    x = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = [f"doc-{i}" for i in range(5)]
    runner = CliRunner()
    # made by a model that is not at hand: refused, naming both ids and the ways out
    other = write_embeddings(tmp_path / "other.parquet", ids, x, np.ones(5), np.zeros(5, bool), "cccccccccccc")
    bundled_id = model_id_of(DEFAULT_MODEL_DIR)
    res = runner.invoke(cli, ["dedup", str(other), "-o", str(tmp_path / "o1"), "-q"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "cccccccccccc" in res.output and bundled_id in res.output
    assert "--model" in res.output and "--threshold" in res.output
    assert runner.invoke(cli, ["dedup", str(other), "-o", str(tmp_path / "o2"), "--threshold", "0.9",
                               "-q"]).exit_code == 0
    # made by the bundled model: its training.json threshold
    bundled = write_embeddings(tmp_path / "b.parquet", ids, x, np.ones(5), np.zeros(5, bool), bundled_id)
    res = runner.invoke(cli, ["dedup", str(bundled), "-o", str(tmp_path / "o3"), "-q"])
    assert res.exit_code == 0, res.output
    expected = _json.loads((DEFAULT_MODEL_DIR / "training.json").read_text())["dedup_threshold"]
    assert _json.loads((tmp_path / "o3" / "summary.json").read_text())["thresholds"]["cosine"] == expected
    # made by a model given with --model: that model's threshold (its training.json), not the bundled one's
    (tiny_dir / "training.json").write_text(_json.dumps({"dedup_threshold": 0.123}))
    try:
        tiny = write_embeddings(tmp_path / "t.parquet", ids, x, np.ones(5), np.zeros(5, bool), model_id_of(tiny_dir))
        res = runner.invoke(cli, ["dedup", str(tiny), "-o", str(tmp_path / "o4"), "--model", str(tiny_dir), "-q"])
        assert res.exit_code == 0, res.output
        assert _json.loads((tmp_path / "o4" / "summary.json").read_text())["thresholds"]["cosine"] == 0.123
        res = runner.invoke(cli, ["dedup", str(tiny), "-o", str(tmp_path / "o5"), "-q"])  # bundled model: refused
        assert res.exit_code == 1 and model_id_of(tiny_dir) in res.output and bundled_id in res.output
    finally:
        (tiny_dir / "training.json").unlink()


def test_bucket_cap_defaults_to_the_pipelines(tmp_path, corpus, monkeypatch):
    from reformer_retrieval.pipeline import candidates

    monkeypatch.setattr(candidates, "DEFAULT_BUCKET_CAP", 2)  # the CLI follows the pipeline's constant
    res = CliRunner().invoke(cli, ["dedup", str(corpus), "-o", str(tmp_path / "o"), "--method", "minhash",
                                   "--threshold", "0.5", "--engine", "local", "-q"])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["bucket_cap"] == 2 and summary["oversized_buckets"]["count"] >= 1  # the 3-member bucket
