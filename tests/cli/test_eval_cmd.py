"""``reformer-retrieval eval dedup | search``."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from reformer_retrieval.cli.main import cli
from reformer_retrieval.indexes import build_index, set_threads

from reformer_retrieval.corpus import write_embeddings


@pytest.fixture(autouse=True)
def _one_thread():
    before = set_threads(None)
    set_threads(1)
    yield
    set_threads(before)


@pytest.fixture
def labelled(tmp_path):
    """Six documents in three labelled clusters; embeddings where doc 4 sits between two clusters."""
    rng = np.random.default_rng(0)
    base = rng.standard_normal((3, 8))
    x = np.stack([base[0], base[0] + 0.05, base[1], base[1] + 0.05, base[2], base[1] + 0.5]).astype(np.float32)
    x += 0.01 * rng.standard_normal(x.shape).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = [f"d{i}" for i in range(6)]
    texts = ["alpha beta gamma delta epsilon zeta", "alpha beta gamma delta epsilon eta", "one two three four five",
             "one two three four six", "lorem ipsum dolor sit amet", "one two three four five seven"]
    pq.write_table(pa.table({"id": ids, "text": texts, "cluster": ["a", "a", "b", "b", "c", "b"]}),
                   tmp_path / "lab.parquet")
    write_embeddings(tmp_path / "emb.parquet", ids, x, np.full(6, 5), np.zeros(6, bool), "eeeeeeeeeeee")
    return tmp_path, x


def test_eval_dedup_sweep_json_plot(labelled):
    root, _ = labelled
    res = CliRunner().invoke(cli, ["eval", "dedup", str(root / "lab.parquet"), "--embeddings", str(root / "emb.parquet"),
                                   "--sweep", "0.5:0.99:0.01", "--json", str(root / "m.json"), "--plot",
                                   str(root / "pr.png"), "-q"])
    assert res.exit_code == 0, res.output
    assert "| threshold | ARI |" in res.output and "*F1" in res.output
    data = json.loads((root / "m.json").read_text())
    assert len(data["sweep"]) == 50 and data["best_f1"]["f1"] == pytest.approx(1.0)
    assert (root / "pr.png").read_bytes()[:4] == b"\x89PNG"


def test_eval_dedup_default_threshold_is_the_embeddings_model(labelled):
    """Embeddings of a model not at hand get no default threshold (both ids named); a sweep needs none."""
    root, _ = labelled
    res = CliRunner().invoke(cli, ["eval", "dedup", str(root / "lab.parquet"), "--embeddings", str(root / "emb.parquet"),
                                   "-q"])
    assert res.exit_code == 1 and "eeeeeeeeeeee" in res.output and "--threshold" in res.output
    assert "Traceback" not in res.output
    res = CliRunner().invoke(cli, ["eval", "dedup", str(root / "lab.parquet"), "--embeddings", str(root / "emb.parquet"),
                                   "--threshold", "0.9", "--json", str(root / "t.json"), "-q"])
    assert res.exit_code == 0, res.output
    assert json.loads((root / "t.json").read_text())["default_threshold"] is None


def test_eval_dedup_minhash_and_clusters(labelled):
    root, _ = labelled
    res = CliRunner().invoke(cli, ["eval", "dedup", str(root / "lab.parquet"), "--method", "minhash", "--threshold",
                                   "0.3", "--json", str(root / "mh.json"), "-q"])
    assert res.exit_code == 0, res.output
    assert json.loads((root / "mh.json").read_text())["sweep"][0]["threshold"] == 0.3
    pq.write_table(pa.table({"id": [f"d{i}" for i in range(6)], "cluster_id": [0, 0, 1, 1, 2, 3]}),
                   root / "clusters.parquet")
    res = CliRunner().invoke(cli, ["eval", "dedup", str(root / "lab.parquet"), "--clusters",
                                   str(root / "clusters.parquet")])
    assert res.exit_code == 0, res.output
    # predicted pairs {01, 23}, true pairs {01, 23, 25, 35}: precision 1, recall 0.5
    assert "precision 1.0000  recall 0.5000" in res.output
    pq.write_table(pa.table({"id": ["d0"], "cluster_id": [0]}), root / "short.parquet")
    res = CliRunner().invoke(cli, ["eval", "dedup", str(root / "lab.parquet"), "--clusters", str(root / "short.parquet")])
    assert res.exit_code == 1 and "lacks 5 labelled ids" in res.output


def test_eval_search_from_index_and_results(labelled):
    root, x = labelled
    ids = [f"d{i}" for i in range(6)]
    index = build_index("flat", x, ids, model_id="eeeeeeeeeeee")
    index.save(root / "idx")
    # queries by saved results (no model needed)
    hits = index.search(x[[0, 2]], 3, exclude=["d0", "d2"])
    rows = [(q, r + 1, h) for q, hs in zip(["q0", "q2"], hits.ids) for r, h in enumerate(hs)]
    pq.write_table(pa.table({"query_id": [r[0] for r in rows], "rank": [r[1] for r in rows],
                             "id": [r[2] for r in rows]}), root / "hits.parquet")
    pq.write_table(pa.table({"query_id": ["q0", "q2"], "text": ["x", "y"], "doc_id": ["d0", "d2"]}),
                   root / "q.parquet")
    pq.write_table(pa.table({"query_id": ["q0", "q2", "q2"], "doc_id": ["d1", "d3", "d5"],
                             "relevance": [1, 1, 1]}), root / "qrels.parquet")
    res = CliRunner().invoke(cli, ["eval", "search", str(root / "q.parquet"), str(root / "qrels.parquet"),
                                   "--results", str(root / "hits.parquet"), "--exclude-column", "doc_id",
                                   "--ks", "1,3", "--json", str(root / "s.json")])
    assert res.exit_code == 0, res.output
    metrics = json.loads((root / "s.json").read_text())
    assert metrics["recall@3"] == pytest.approx(1.0) and metrics["mrr"] == pytest.approx(1.0)
    assert "| ndcg@10 |" in res.output
    res = CliRunner().invoke(cli, ["eval", "search", str(root / "q.parquet"), str(root / "qrels.parquet")])
    assert res.exit_code == 2 and "--index" in res.output


def test_eval_search_with_index_and_model(tmp_path):
    import torch

    from reformer_retrieval import ReformerConfig, ReformerEncoder
    from reformer_retrieval.encode import Encoder

    cfg = ReformerConfig(d_model=32, n_layers=2, n_heads=2, d_ff=64, embedding_dim=16, chunk_size=16, max_len=4096,
                         axial_pos_shape=(64, 64))
    torch.manual_seed(0)
    model = ReformerEncoder(cfg).save_pretrained(tmp_path / "model")
    enc = Encoder.load(model, device="cpu")
    texts = ["the fox and the dog", "quarks and gluons", "zebras on the savanna", "the fox and the cat"]
    build_index("flat", enc.encode(texts), ["a", "b", "c", "d"], model_id=enc.model_id).save(tmp_path / "idx")
    pq.write_table(pa.table({"query_id": ["q1"], "text": [texts[0]], "doc_id": ["a"]}), tmp_path / "q.parquet")
    pq.write_table(pa.table({"query_id": ["q1", "q1"], "doc_id": ["a", "d"], "relevance": [1, 1]}),
                   tmp_path / "qrels.parquet")
    res = CliRunner().invoke(cli, ["eval", "search", str(tmp_path / "q.parquet"), str(tmp_path / "qrels.parquet"),
                                   "--index", str(tmp_path / "idx"), "--model", str(model), "--device", "cpu",
                                   "--exclude-column", "doc_id", "--ks", "3", "--json", str(tmp_path / "m.json")])
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "m.json").read_text())
    # the own document "a" is excluded; "d" is the only relevant one left, and 3 of 3 others are returned
    assert metrics["queries"] == 1 and metrics["recall@3"] == 1.0


def test_eval_dedup_encodes_in_memory_like_an_embeddings_file(labelled, tiny_dir):
    """Without --embeddings the corpus is encoded in memory: the same scores as from `encode`'s file."""
    from reformer_retrieval.encode import Encoder

    root, _ = labelled
    Encoder.load(tiny_dir, device="cpu").encode_parquet(root / "lab.parquet", root / "tiny.parquet",
                                                        show_progress=False)
    common = ["eval", "dedup", str(root / "lab.parquet"), "--sweep", "0.5:0.99:0.07", "-q"]
    res = CliRunner().invoke(cli, [*common, "--model", str(tiny_dir), "--device", "cpu", "--json",
                                   str(root / "mem.json")])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, [*common, "--embeddings", str(root / "tiny.parquet"), "--json",
                                   str(root / "file.json")])
    assert res.exit_code == 0, res.output
    mem, file = (json.loads((root / name).read_text())["sweep"] for name in ("mem.json", "file.json"))
    assert mem == file


def test_eval_dedup_marks_precision(tmp_path):
    marks = tmp_path / "marks.jsonl"
    rows = [{"id_a": "a", "id_b": "b", "mark": "duplicate", "merged": True},
            {"id_a": "a", "id_b": "c", "mark": "duplicate", "merged": True},
            {"id_a": "a", "id_b": "d", "mark": "not_duplicate", "merged": True},
            {"id_a": "e", "id_b": "f", "mark": "duplicate", "merged": False}]
    marks.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "m.json"
    res = CliRunner().invoke(cli, ["eval", "dedup", "--marks", str(marks), "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "4 marked pairs: precision 0.6667 on the 3 the run merged" in res.output
    assert "1 marked duplicates kept apart" in res.output
    assert json.loads(out.read_text())["precision"] == pytest.approx(2 / 3)
    res = CliRunner().invoke(cli, ["eval", "dedup"])
    assert res.exit_code != 0 and "LABELLED" in res.output
    bad = tmp_path / "bad.csv"
    bad.write_text("id_a,id_b,mark\nx,y,perhaps\n")
    res = CliRunner().invoke(cli, ["eval", "dedup", "--marks", str(bad)])
    assert res.exit_code == 1 and "bad.csv:2: mark 'perhaps'" in res.output
