"""Corpus reading (streaming, checks, skipped rows) and embeddings writing/reading."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from reformer_retrieval import __version__
from reformer_retrieval.corpus import (
    CorpusError,
    EmbeddingWriter,
    SkippedRecord,
    SkipReport,
    count_rows,
    iter_batches,
    iter_embeddings,
    read_embeddings,
    read_embeddings_metadata,
    read_skipped,
    resolve_sources,
    write_embeddings,
    write_skipped,
)


def _write(path: Path, **columns) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path


def _all(src, **kw):
    batches = list(iter_batches(src, **kw))
    ids = [i for b in batches for i in b.ids]
    texts = [t for b in batches for t in b.texts]
    skipped = [s for b in batches for s in b.skipped]
    return batches, ids, texts, skipped


def _unit(n: int, dim: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


# ------------------------------------------------------------------------------------------- reading
def test_single_file_streams_in_order_with_batch_size(tmp_path):
    ids = [f"d{i}" for i in range(25)]
    texts = [f"text number {i}" for i in range(25)]
    path = _write(tmp_path / "c.parquet", id=ids, text=texts, extra=list(range(25)))
    batches, got_ids, got_texts, skipped = _all(path, batch_size=10)
    assert [len(b) for b in batches] == [10, 10, 5]
    assert got_ids == ids and got_texts == texts and skipped == []
    assert batches[1].rows == list(range(10, 20)) and batches[0].source == path
    assert count_rows(path) == 25


def test_directory_of_shards_and_glob(tmp_path):
    d = tmp_path / "shards"
    _write(d / "part-1.parquet", id=["b1", "b2"], text=["x", "y"])
    _write(d / "part-0.parquet", id=["a1"], text=["z"])
    _write(d / "nested" / "part-2.parquet", id=["c1"], text=["w"])
    _write(d / ".hidden" / "part-9.parquet", id=["h"], text=["h"])
    (d / "_SUCCESS").write_text("")
    assert [p.name for p in resolve_sources(d)] == ["part-2.parquet", "part-0.parquet", "part-1.parquet"]
    _, ids, _, _ = _all(d)
    assert ids == ["c1", "a1", "b1", "b2"]
    _, ids, _, _ = _all(str(d / "part-*.parquet"))
    assert ids == ["a1", "b1", "b2"]
    _, ids, _, _ = _all([d / "part-1.parquet", d / "part-0.parquet"])
    assert ids == ["b1", "b2", "a1"]


def test_only_projected_columns_are_read(tmp_path, monkeypatch):
    path = _write(tmp_path / "c.parquet", id=["a"], text=["t"], blob=["x" * 1000])
    seen = []
    original = ds.dataset

    class Spy:
        def __init__(self, *args, **kwargs):
            self.inner = original(*args, **kwargs)

        def scanner(self, **kwargs):
            seen.append(sorted(str(e) for e in kwargs["columns"].values()))
            return self.inner.scanner(**kwargs)

    monkeypatch.setattr(ds, "dataset", Spy)
    _all(path)
    assert seen == [["id", "text"]]


def test_integer_ids(tmp_path):
    path = _write(tmp_path / "c.parquet", id=pa.array([7, 3, 11], pa.int32()), text=["a", "b", "c"])
    _, ids, _, _ = _all(path)
    assert ids == [7, 3, 11] and all(isinstance(i, int) for i in ids)


def test_custom_columns_and_dictionary_text(tmp_path):
    text = pa.array(["one", "two", "one"]).dictionary_encode()
    path = _write(tmp_path / "c.parquet", doc=["x", "y", "z"], body=text)
    _, ids, texts, _ = _all(path, id_column="doc", text_column="body")
    assert ids == ["x", "y", "z"] and texts == ["one", "two", "one"]


def test_missing_column_names_file_and_lists_columns(tmp_path):
    path = _write(tmp_path / "c.parquet", id=["a"], body=["t"])
    with pytest.raises(CorpusError) as err:
        _all(path)
    msg = str(err.value)
    assert str(path) in msg and "'text'" in msg and "'id', 'body'" in msg and "\n" not in msg


@pytest.mark.parametrize(
    ("columns", "needle"),
    [
        ({"id": ["a"], "text": [3]}, "text column 'text' has type int64"),
        ({"id": [1.5], "text": ["t"]}, "id column 'id' has type double"),
        ({"id": ["a"], "text": [["t"]]}, "text column 'text' has type list"),
    ],
)
def test_wrong_column_type(tmp_path, columns, needle):
    path = _write(tmp_path / "c.parquet", **columns)
    with pytest.raises(CorpusError, match=needle):
        _all(path)


def test_nulls_empties_and_non_text_are_skipped_and_reported(tmp_path):
    path = _write(
        tmp_path / "c.parquet",
        id=["a", "b", None, "d", "e", "f"],
        text=["good", None, "orphan", "", "  \n\t", "also good"],
    )
    _, ids, texts, skipped = _all(path)
    assert ids == ["a", "f"] and texts == ["good", "also good"]
    assert [(s.id, s.reason, s.row) for s in skipped] == [
        ("b", "null text", 1),
        (None, "null id", 2),
        ("d", "empty text", 3),
        ("e", "whitespace-only text", 4),
    ]
    assert all(s.file == str(path) for s in skipped)
    binary = _write(tmp_path / "b.parquet", id=["x", "y"], text=pa.array([b"ok \xc3\xa9", b"\xff\xfe"], pa.binary()))
    _, ids, texts, skipped = _all(binary)
    assert ids == ["x"] and texts == ["ok é"]
    assert [(s.id, s.reason) for s in skipped] == [("y", "text is not valid UTF-8")]


def test_duplicate_ids_error_names_id_and_both_rows(tmp_path):
    d = tmp_path / "shards"
    _write(d / "p0.parquet", id=["a", "dup"], text=["1", "2"])
    _write(d / "p1.parquet", id=["c", "dup"], text=["3", "4"])
    with pytest.raises(CorpusError) as err:
        _all(d)
    msg = str(err.value)
    assert "'dup'" in msg and f"{d / 'p0.parquet'} row 1" in msg and f"{d / 'p1.parquet'} row 1" in msg


def test_duplicate_ids_keep_first(tmp_path):
    path = _write(
        tmp_path / "c.parquet", id=[1, 2, 1, 3, 3, 1], text=["first", "x", "second", None, "valid later", "third"]
    )
    _, ids, texts, skipped = _all(path, on_duplicate="keep_first")
    # id 3: the first row has no text, so the first *valid* row is kept
    assert ids == [1, 2, 3] and texts == ["first", "x", "valid later"]
    assert [(s.id, s.row) for s in skipped] == [(1, 2), (3, 3), (1, 5)]
    assert skipped[0].reason.startswith("duplicate id (kept") and f"{path} row 0" in skipped[0].reason
    assert skipped[1].reason == "null text"


def test_mixed_id_kinds_across_shards(tmp_path):
    d = tmp_path / "shards"
    _write(d / "p0.parquet", id=["a"], text=["1"])
    _write(d / "p1.parquet", id=[2], text=["2"])
    with pytest.raises(CorpusError, match=r"holds int ids but .* holds str ids"):
        _all(d)


@pytest.mark.parametrize("content", [b"", b"id,text\na,hello\n", b"PAR1 definitely not parquet"])
def test_non_parquet_and_empty_file(tmp_path, content):
    path = tmp_path / "bad.parquet"
    path.write_bytes(content)
    with pytest.raises(CorpusError) as err:
        _all(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: not a readable Parquet file") and "\n" not in msg


def test_missing_path_empty_directory_and_unmatched_glob(tmp_path):
    with pytest.raises(CorpusError, match="no such file or directory"):
        _all(tmp_path / "nope.parquet")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="holds no"):
        _all(tmp_path / "empty")
    with pytest.raises(CorpusError, match="matches no file"):
        _all(str(tmp_path / "*.parquet"))


def test_zero_row_file_yields_nothing(tmp_path):
    path = tmp_path / "z.parquet"
    pq.write_table(pa.table({"id": pa.array([], pa.string()), "text": pa.array([], pa.string())}), path)
    assert _all(path)[0] == []


def test_bad_arguments(tmp_path):
    path = _write(tmp_path / "c.parquet", id=["a"], text=["t"])
    with pytest.raises(ValueError, match="on_duplicate"):
        _all(path, on_duplicate="drop")
    with pytest.raises(CorpusError, match="must differ"):
        _all(path, id_column="text")


# ------------------------------------------------------------------------------------------- skipped
def test_skipped_round_trip_and_summary(tmp_path):
    records = [
        SkippedRecord("a", "null text", "f.parquet", 1),
        SkippedRecord(None, "null id", "f.parquet", 2),
        SkippedRecord("c", "duplicate id (kept f.parquet row 0)", "g.parquet", 0),
    ]
    path = write_skipped(tmp_path / "s.parquet", records, "str")
    assert read_skipped(path) == records
    report = SkipReport(records)
    assert report.counts() == {"null text": 1, "null id": 1, "duplicate id": 1}
    assert report.summary() == "3 rows skipped (1 duplicate id, 1 null id, 1 null text)"
    assert SkipReport().summary() == "no rows skipped"
    empty = write_skipped(tmp_path / "e.parquet", [], "int")
    assert read_skipped(empty) == [] and pq.read_schema(empty).field("id").type == pa.int64()


# ------------------------------------------------------------------------------------------- embeddings
@pytest.mark.parametrize("ids", [["x", "y", "z"], [10, 20, 30]])
def test_embeddings_round_trip(tmp_path, ids):
    vectors = _unit(3, 8)
    path = write_embeddings(tmp_path / "e.parquet", ids, vectors, [5, 6, 7], [False, True, False], "abc123")
    table = read_embeddings(path)
    assert table.ids == ids and table.model_id == "abc123" and table.dim == 8 and len(table) == 3
    assert table.vectors.dtype == np.float32 and np.array_equal(table.vectors, vectors)
    assert table.n_tokens.tolist() == [5, 6, 7] and table.truncated.tolist() == [False, True, False]
    assert table.library_version == __version__
    schema = pq.read_schema(path)
    assert schema.field("embedding").type == pa.list_(pa.float32(), 8)
    assert schema.field("n_tokens").type == pa.int32() and schema.field("truncated").type == pa.bool_()
    assert schema.field("id").type == (pa.string() if isinstance(ids[0], str) else pa.int64())
    assert schema.metadata[b"model_id"] == b"abc123" and schema.metadata[b"dim"] == b"8"
    assert read_embeddings_metadata(path) == {
        "model_id": "abc123", "dim": 8, "library_version": __version__, "count": 3, "channels": "both"
    }


def test_embeddings_streaming_and_empty(tmp_path):
    vectors = _unit(50, 4, seed=1)
    ids = [f"d{i}" for i in range(50)]
    path = write_embeddings(tmp_path / "e.parquet", ids, vectors, np.arange(50), np.zeros(50, bool), "m")
    pieces = list(iter_embeddings(path, batch_size=20))
    assert [len(p) for p in pieces] == [20, 20, 10]
    assert [i for p in pieces for i in p.ids] == ids
    assert np.array_equal(np.concatenate([p.vectors for p in pieces]), vectors)
    empty = write_embeddings(tmp_path / "z.parquet", [], np.zeros((0, 4), np.float32), [], [], "m")
    table = read_embeddings(empty)
    assert table.vectors.shape == (0, 4) and table.ids == [] and table.dim == 4


@pytest.mark.parametrize(
    ("ids", "vectors", "needle"),
    [
        (["a", "b"], np.ones((2, 3), np.float64), "must be float32"),
        (["a", "b"], np.ones((3, 3), np.float32), "shape"),
        (["a", 2], np.ones((2, 3), np.float32), "mix strings and integers"),
        (["a", 1.5], np.ones((2, 3), np.float32), "ids must be str or int"),
        (["a", "b"], np.array([[1, 0, 0], [np.nan, 0, 0]], np.float32), "id 'b' holds NaN"),
    ],
)
def test_write_embeddings_rejects_bad_input_and_leaves_nothing(tmp_path, ids, vectors, needle):
    target = tmp_path / "e.parquet"
    with pytest.raises(CorpusError, match=needle):
        write_embeddings(target, ids, vectors, [1] * len(ids), [False] * len(ids), "m")
    assert os.listdir(tmp_path) == []


def test_writer_is_atomic(tmp_path):
    target = tmp_path / "e.parquet"
    write_embeddings(target, ["old"], _unit(1, 4), [1], [False], "m0")
    before = target.read_bytes()
    writer = EmbeddingWriter(target, dim=4, model_id="m1", id_kind="str")
    writer.write(["new"], _unit(1, 4, seed=3), [2], [True])
    assert target.read_bytes() == before  # nothing under the final name until close
    writer.abort()
    assert target.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["e.parquet"]
    with pytest.raises(RuntimeError), EmbeddingWriter(target, dim=4, model_id="m2") as w:
        w.write(["x"], _unit(1, 4), [1], [False])
        raise RuntimeError("killed")
    assert target.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["e.parquet"]
    with EmbeddingWriter(target, dim=4, model_id="m3") as w:
        w.write(["a", "b"], _unit(2, 4), [1, 2], [False, False])
        w.write(["c"], _unit(1, 4), [3], [False])
    table = read_embeddings(target)
    assert table.ids == ["a", "b", "c"] and table.model_id == "m3"


def test_read_embeddings_rejects_other_files(tmp_path):
    plain = _write(tmp_path / "c.parquet", id=["a"], text=["t"])
    with pytest.raises(CorpusError, match="not an embeddings file: missing column"):
        read_embeddings(plain)
    no_meta = tmp_path / "n.parquet"
    emb = pa.FixedSizeListArray.from_arrays(pa.array([1.0, 0.0], pa.float32()), 2)
    pq.write_table(pa.table({"id": ["a"], "embedding": emb, "n_tokens": [1], "truncated": [False]}), no_meta)
    with pytest.raises(CorpusError, match="no model_id/dim"):
        read_embeddings(no_meta)


# ------------------------------------------------------------------------------------------- sample corpus
REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "examples" / "sample.parquet"
SHARED_CORPUS = REPO / ".." / "shared" / "data" / "corpus"


def test_bundled_sample_corpus_is_valid():
    _, ids, texts, skipped = _all(SAMPLE)
    assert skipped == [] and 150 <= len(ids) <= 250
    table = pq.read_table(SAMPLE)
    assert {"id", "text", "source", "license", "cluster", "variant"} <= set(table.column_names)
    rows = table.to_pylist()
    originals = {r["id"] for r in rows if r["variant"] == "original"}
    variants = [r for r in rows if r["variant"] != "original"]
    assert 0.15 <= len(variants) / len(originals) <= 0.25
    assert all(r["cluster"] in originals and r["id"] != r["cluster"] for r in variants)
    assert all(r["cluster"] == r["id"] for r in rows if r["variant"] == "original")
    assert all(r["license"] and "CC-BY-SA" not in r["license"] for r in rows)
    assert sum(len(t) for t in texts) <= 1_500_000 and SAMPLE.stat().st_size <= 3_000_000
    assert len({r["source"] for r in rows}) >= 8
    assert (REPO / "examples" / "README.md").is_file() and (REPO / "examples" / "LICENSES" / "MIT.txt").is_file()


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_CORPUS.is_dir(), reason="needs ../shared/data/corpus")
def test_sample_corpus_rebuilds_byte_for_byte(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "sample.parquet"
    subprocess.run(
        [sys.executable, str(REPO / "examples" / "make_sample.py"), "--corpus", str(SHARED_CORPUS), "--out", str(out)],
        check=True,
        capture_output=True,
    )
    assert out.read_bytes() == SAMPLE.read_bytes()
