"""`Searcher`: text / id / vector queries, model checks, output formats, query files."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from reformer_retrieval.indexes import IndexMismatchError, MinHashIndex, build_index, set_threads

from reformer_retrieval.encode import Encoder
from reformer_retrieval.search import Searcher, format_hits, hits_to_dict, read_queries, write_hits

TEXTS = ["a story about a fox and a dog", "quantum chromodynamics and gluons", "zebras on the savanna",
         "invoice numbers for the second quarter", "a story about a fox and a cat"]


@pytest.fixture(autouse=True)
def _one_thread():
    before, tb = set_threads(None), torch.get_num_threads()
    set_threads(1)
    torch.set_num_threads(1)
    yield
    set_threads(before)
    torch.set_num_threads(tb)


@pytest.fixture(scope="module")
def encoder(tiny_dir):
    return Encoder.load(tiny_dir, device="cpu")


def test_text_and_id_queries(encoder, tmp_path):
    vectors = encoder.encode(TEXTS)
    build_index("flat", vectors, [f"d{i}" for i in range(5)], model_id=encoder.model_id).save(tmp_path / "i")
    s = Searcher.open(tmp_path / "i", encoder=encoder)
    hits = s.search_texts([TEXTS[2]], k=3)
    assert hits.column_names == ["query_id", "rank", "id", "score"]
    assert hits.column("id").to_pylist()[0] == "d2" and hits.column("rank").to_pylist() == [1, 2, 3]
    assert hits.column("score").to_pylist()[0] == pytest.approx(1.0, abs=1e-5)
    by_id = s.search_ids(["d2", "d0"], k=2)
    grouped = hits_to_dict(by_id)
    assert "d2" not in grouped["d2"] and "d0" not in grouped["d0"] and len(grouped["d0"]) == 2
    with_self = s.search_ids(["d2"], k=2, exclude_self=False)
    assert with_self.column("id").to_pylist()[0] == "d2"
    vec = s.search_vectors(vectors[:1], k=1, query_ids=["v"])
    assert vec.column("query_id").to_pylist() == ["v"] and vec.column("id").to_pylist() == ["d0"]
    excl = s.search_texts([TEXTS[0]], k=1, exclude=["d0"])
    assert excl.column("id").to_pylist() != ["d0"]


def test_index_from_another_model_refused(encoder, tmp_path):
    vectors = encoder.encode(TEXTS)
    build_index("flat", vectors, list(range(5)), model_id="ffffffffffff").save(tmp_path / "i")
    with pytest.raises(IndexMismatchError) as err:
        Searcher.open(tmp_path / "i", encoder=encoder)
    assert "ffffffffffff" in str(err.value) and encoder.model_id in str(err.value)


def test_minhash_index_search(tmp_path):
    index = MinHashIndex(threshold=0.3, ngram=2)
    index.add(TEXTS, list(range(5)))
    index.save(tmp_path / "mh")
    s = Searcher.open(tmp_path / "mh")
    hits = hits_to_dict(s.search_texts(["a story about a fox and a bird"], k=2))
    assert hits[0][:2] in ([0, 4], [4, 0])
    assert 4 not in hits_to_dict(s.search_ids([4], k=3))[4]


def test_formats_and_query_files(tmp_path):
    table = pa.table({"query_id": ["q1", "q1", "q2"], "rank": pa.array([1, 2, 1], pa.int32()),
                      "id": ["a", "b", "c"], "score": pa.array([0.9, 0.5, 0.7], pa.float32())})
    text = format_hits(table, "table")
    assert text.splitlines()[0].split() == ["query", "rank", "score", "id"]
    assert "0.9000" in text and text.count("\n") == 3
    lines = [json.loads(line) for line in format_hits(table, "json").splitlines()]
    assert lines[0] == {"query_id": "q1", "hits": [{"rank": 1, "id": "a", "score": 0.9},
                                                   {"rank": 2, "id": "b", "score": 0.5}]}
    write_hits(table, tmp_path / "h.parquet")
    assert pq.read_table(tmp_path / "h.parquet").equals(table)
    pq.write_table(pa.table({"query_id": ["x", "y"], "text": ["t1", "t2"], "doc_id": ["d1", None]}),
                   tmp_path / "q.parquet")
    assert read_queries(tmp_path / "q.parquet", exclude_column="doc_id") == (["x", "y"], ["t1", "t2"], ["d1", None])
    pq.write_table(pa.table({"id": ["x"], "text": [""]}), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="query 'x' has a null or empty 'text'"):
        read_queries(tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="no column 'body'"):
        read_queries(tmp_path / "q.parquet", text_column="body")
    # JSON Lines and CSV query sets, nested fields by dotted name
    (tmp_path / "q.jsonl").write_text('{"query_id": "x", "q": {"text": "t1"}}\n{"query_id": "y", "q": {"text": "t2"}}\n')
    assert read_queries(tmp_path / "q.jsonl", text_column="q.text") == (["x", "y"], ["t1", "t2"], None)
    (tmp_path / "q.csv").write_text("id,text,own\n1,t1,d1\n2,t2,d2\n")
    assert read_queries(tmp_path / "q.csv", exclude_column="own") == (["1", "2"], ["t1", "t2"], ["d1", "d2"])


def test_searcher_open_does_not_hash_the_index(tmp_path, monkeypatch):
    """Opening for a search checks sizes only: a large index is not re-read per query."""
    import numpy as np
    from reformer_retrieval.indexes import build_index
    from reformer_retrieval.indexes import store as store_module

    from reformer_retrieval.search import Searcher

    x = np.random.default_rng(0).standard_normal((20, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    build_index("flat", x, [f"d{i}" for i in range(20)]).save(tmp_path / "i")

    def no_hashing(path):
        raise AssertionError(f"{path} was hashed while opening for a search")

    monkeypatch.setattr(store_module, "_sha256", no_hashing)
    searcher = Searcher.open(tmp_path / "i")
    assert searcher.index.search(x[:1], 1).ids == [["d0"]]
