"""Corpus formats: Parquet, JSON Lines and CSV (plain and compressed), directories, globs, URIs, dotted names."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from reformer_retrieval import corpus_formats
from reformer_retrieval.corpus import (
    CorpusError,
    corpus_id_kind,
    count_rows,
    footer_row_count,
    iter_batches,
    read_texts,
)
from reformer_retrieval.corpus_formats import (
    detect_format,
    iter_record_batches,
    resolve_field,
    resolve_sources,
    scan_file,
)

ROWS = [{"id": f"d{i}", "text": f"document number {i}", "meta": {"body": f"body {i}", "src": {"id": i}}} for i in range(7)]


def _jsonl(rows=ROWS) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _csv() -> bytes:
    lines = ["id,text,n"] + [f'{r["id"]},"{r["text"]}, with a comma",{i}' for i, r in enumerate(ROWS)]
    return ("\n".join(lines) + "\n").encode()


def _zstd(data: bytes) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.CompressedOutputStream(sink, "zstd") as out:
        out.write(data)
    return sink.getvalue().to_pybytes()


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


ENCODINGS = {
    "c.jsonl": _jsonl,
    "c.ndjson": _jsonl,
    "c.json": _jsonl,
    "c.jsonl.gz": lambda: gzip.compress(_jsonl()),
    "c.json.gz": lambda: gzip.compress(_jsonl()),
    "c.jsonl.zst": lambda: _zstd(_jsonl()),
    "c.jsonl.bz2": lambda: bz2.compress(_jsonl()),
    "c.csv": _csv,
    "c.csv.gz": lambda: gzip.compress(_csv()),
    "c.tsv": lambda: "".join(f"{r['id']}\t{r['text']}, with a comma\n" for r in ROWS).join(["id\ttext\n", ""]).encode(),
}


@pytest.mark.parametrize("name", sorted(ENCODINGS))
def test_every_format_reads_the_same_documents(tmp_path, name):
    path = _write(tmp_path / name, ENCODINGS[name]())
    ids, texts, skipped = read_texts(path)
    assert ids == [r["id"] for r in ROWS] and not skipped
    if ".csv" in name or ".tsv" in name:
        assert texts == [r["text"] + ", with a comma" for r in ROWS]
    else:
        assert texts == [r["text"] for r in ROWS]
    assert count_rows(path) == len(ROWS) and footer_row_count(path) is None


def test_format_detection_by_magic_and_name(tmp_path):
    assert detect_format(_write(tmp_path / "a.jsonl.zst", _zstd(_jsonl()))).compression == "zstd"
    # a gzip file whose name does not say so, and a JSON Lines file with no extension, are still read
    assert detect_format(_write(tmp_path / "b.jsonl", gzip.compress(_jsonl()))).compression == "gzip"
    assert detect_format(_write(tmp_path / "noext", _jsonl())).kind == "json"
    assert detect_format(_write(tmp_path / "x.gz", gzip.compress(_jsonl()))).kind == "json"
    pq.write_table(pa.table({"id": ["a"], "text": ["t"]}), tmp_path / "named.data")
    assert detect_format(tmp_path / "named.data").kind == "parquet"
    assert read_texts(tmp_path / "named.data")[0] == ["a"]


@pytest.mark.parametrize(
    ("name", "data", "what"),
    [
        ("doc.pdf", b"%PDF-1.7 ...", "a PDF document"),
        ("data.json", b'[{"id": 1, "text": "a"}]', "a JSON array"),
        ("notes.txt", b"just some words\n", "plain text (.txt)"),
        ("c.jsonl.xz", lzma.compress(_jsonl()), "xz-compressed data"),
        ("book.xlsx", b"PK\x03\x04rest", "a ZIP archive"),
        ("c.feather", b"ARROW1\x00\x00", "an Arrow IPC (Feather) file"),
        ("blob.bin", bytes(range(256)) * 4, "binary data (.bin)"),
        ("notes.txt.gz", gzip.compress(b"plain words"), "gzip-compressed plain text"),
        ("c.parquet.gz", gzip.compress(b"PAR1xxxx"), "gzip-compressed Parquet"),
    ],
)
def test_unreadable_format_is_named(tmp_path, name, data, what):
    path = _write(tmp_path / name, data)
    with pytest.raises(CorpusError) as err:
        read_texts(path)
    msg = str(err.value)
    assert msg.startswith(f"only Parquet, JSON Lines and CSV are read: {path} looks like {what}"), msg
    assert "\n" not in msg


def test_directory_mixes_formats_and_skips_other_files(tmp_path):
    d = tmp_path / "shards"
    pq.write_table(pa.table({"id": ["p0", "p1"], "text": ["a", "b"]}), _write(d / "00.parquet", b""))
    _write(d / "01.jsonl.gz", gzip.compress(_jsonl(ROWS[:2])))
    _write(d / "02.csv", b"id,text\nc0,x\n")
    _write(d / "README.md", b"# not a shard")
    _write(d / "config.json", b'{"not": "a shard"}')
    _write(d / ".parts" / "part-00000.jsonl", _jsonl(ROWS[2:3]))
    assert [p.name for p in resolve_sources(d)] == ["00.parquet", "01.jsonl.gz", "02.csv"]
    assert read_texts(d)[0] == ["p0", "p1", "d0", "d1", "c0"]


def test_glob_and_file_uri(tmp_path):
    for i in range(3):
        _write(tmp_path / f"part-{i}.jsonl.zst", _zstd(_jsonl(ROWS[2 * i : 2 * i + 2])))
    expect = [r["id"] for r in ROWS[:6]]
    assert read_texts(str(tmp_path / "part-*.jsonl.zst"))[0] == expect
    assert read_texts(f"file://{tmp_path}/part-*.jsonl.zst")[0] == expect
    assert read_texts(f"file://{tmp_path}")[0] == expect
    assert read_texts((tmp_path / "part-0.jsonl.zst").as_uri())[0] == expect[:2]
    with pytest.raises(CorpusError, match="only local paths and file:// URIs are read, not s3://"):
        read_texts("s3://bucket/corpus.jsonl")


def test_dotted_names_reach_nested_fields(tmp_path):
    path = _write(tmp_path / "c.jsonl", _jsonl())
    ids, texts, _ = read_texts(path, id_column="meta.src.id", text_column="meta.body")
    assert ids == list(range(7)) and texts == [f"body {i}" for i in range(7)]
    assert corpus_id_kind(path, "meta.src.id", "meta.body") == "int"
    # the same in Parquet (structs), and an exact top-level name with a dot wins over the nested path
    table = pa.table({"meta": pa.array([r["meta"] for r in ROWS]), "meta.body": ["flat"] * 7, "id": [r["id"] for r in ROWS]})
    pq.write_table(table, tmp_path / "n.parquet")
    assert read_texts(tmp_path / "n.parquet", text_column="meta.body")[1] == ["flat"] * 7
    assert read_texts(tmp_path / "n.parquet", id_column="meta.src.id", text_column="id")[0] == list(range(7))
    with pytest.raises(CorpusError) as err:
        read_texts(path, text_column="meta.title")
    assert "no text column 'meta.title'" in str(err.value) and "'meta.body'" in str(err.value)
    assert resolve_field(pa.schema([("a", pa.int64())]), "a.b") is None


def test_csv_values_are_read_as_written(tmp_path):
    path = _write(tmp_path / "c.csv", b"id,text\n007,123\n010,\n")
    ids, texts, skipped = read_texts(path)
    assert ids == ["007"] and texts == ["123"] and [s.reason for s in skipped] == ["empty text"]


def test_streams_in_bounded_batches(tmp_path):
    rows = [{"id": i, "text": "x" * 50} for i in range(1000)]
    path = _write(tmp_path / "big.jsonl.gz", gzip.compress(_jsonl(rows)))
    sizes = [b.num_rows for b in scan_file(path, {"id": "id"}, batch_size=64)]
    assert max(sizes) == 64 and sum(sizes) == 1000
    batches = list(iter_batches(path, batch_size=100))
    assert len(batches) == 10 and batches[3].rows[0] == 300
    firsts = [row for _, row, _ in iter_record_batches(path, {"t": "text"}, batch_size=300)]
    assert firsts == [0, 300, 600, 900]


def test_bad_rows_name_file_and_row(tmp_path, monkeypatch):
    path = _write(tmp_path / "c.jsonl", b'{"id": 1, "text": "a"}\n{"id": 2, "text": "b"}\nnot json\n')
    with pytest.raises(CorpusError, match=r"c\.jsonl: not a readable JSON Lines file \(JSON parse error"):
        read_texts(path)
    monkeypatch.setattr(corpus_formats, "BLOCK_BYTES", 48)  # the bad line lies past the first block
    with pytest.raises(CorpusError, match=r"c\.jsonl: cannot read rows from 2 on \(JSON parse error"):
        read_texts(path)
    mixed = _write(tmp_path / "m.jsonl", b'{"id": 1, "text": "a"}\n{"id": "x", "text": "b"}\n')
    with pytest.raises(CorpusError, match=r"m\.jsonl: .*changed from number to string"):
        read_texts(mixed)


def test_empty_text_files_and_null_first_texts(tmp_path):
    _write(tmp_path / "d" / "a.jsonl", b"")
    _write(tmp_path / "d" / "b.jsonl", b'{"id": "x", "text": null}\n{"id": "y", "text": "kept"}\n')
    ids, texts, skipped = read_texts(tmp_path / "d")
    assert ids == ["y"] and texts == ["kept"] and [s.reason for s in skipped] == ["null text"]
    with pytest.raises(CorpusError, match="looks like an empty file"):
        read_texts(_write(tmp_path / "empty", b""))
