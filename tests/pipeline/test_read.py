"""Stage ``read``: the corpus reader's column checks (dotted names, id types) and every format's rows."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from reformer_retrieval.corpus import CorpusError, iter_batches
from reformer_retrieval.pipeline.read import ReadTask, plan_shards


def test_binary_ids_are_refused_as_the_corpus_reader_refuses_them(tmp_path):
    for kind in (pa.binary(), pa.large_binary()):
        path = tmp_path / f"{kind}.parquet"
        pq.write_table(pa.table({"id": pa.array([b"a", b"b"], kind), "text": ["x y", "y z"]}), path)
        for read in (lambda p=path: plan_shards(p, "id", "text"), lambda p=path: list(iter_batches(p))):
            with pytest.raises(CorpusError, match=r"id column 'id' has type .*binary; ids must be strings or integers"):
                read()


def test_dotted_names_reach_into_nested_records_in_parquet_and_json(tmp_path):
    rows = [{"meta": {"id": f"d{i}"}, "body": {"text": f"text {i}"}} for i in range(5)]
    parquet = tmp_path / "n.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet, row_group_size=2)
    jsonl = tmp_path / "n.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for source in (parquet, jsonl):
        task = ReadTask(source, "meta.id", "body.text", shard_rows=2)
        tables = [task.run(i)[0] for i in range(task.n_shards())]
        assert [r for t in tables for r in t.column("id").to_pylist()] == [f"d{i}" for i in range(5)]
        assert [r for t in tables for r in t.column("text").to_pylist()] == [f"text {i}" for i in range(5)]
    with pytest.raises(CorpusError, match=r"n\.parquet: no text column 'body\.body'; the file has columns: .*'body\.text'"):
        plan_shards(parquet, "meta.id", "body.body")


def test_a_json_text_column_null_in_its_first_block_is_read(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"id": "a", "text": None}) + "\n")
    _, shards, kind = plan_shards(path, "id", "text")
    assert kind == "str" and shards[0].rows == 1
    table, report = ReadTask(path).run(0)
    assert table.column("skip_reason").to_pylist() == ["null text"] and report["skipped"] == 1
