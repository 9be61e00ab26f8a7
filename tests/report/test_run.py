"""Reading a dedup output directory: its files, and one-line errors naming what is wrong."""

from __future__ import annotations

import json

import pytest

from reformer_retrieval.report.run import load_corpus_columns, load_run


def test_load_run_reads_the_output_files(review_run):
    run = load_run(review_run["out"])
    assert run.summary["documents"] == len(run.ids) == len(review_run["ids"])
    assert run.thresholds == {"cosine": 0.9, "jaccard": 0.5}
    assert run.embeddings_path is not None and int(run.is_representative.sum()) == run.summary["clusters"]
    assert (run.pair_column("cosine") >= 0.9).all()


def test_load_run_errors_name_the_file(tmp_path, review_run):
    with pytest.raises(ValueError, match="not a directory"):
        load_run(tmp_path / "missing")
    (tmp_path / "summary.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"summary.json: not JSON"):
        load_run(tmp_path)
    (tmp_path / "summary.json").write_text(json.dumps({"documents": 1}))
    with pytest.raises(ValueError, match=r"clusters.parquet: not found"):
        load_run(tmp_path)
    with pytest.raises(ValueError, match=r"no column 'title'"):
        load_corpus_columns(review_run["corpus"], {"g0-0"}, "id", ["title"])


def test_load_corpus_columns_keeps_only_wanted_ids(review_run):
    got = load_corpus_columns(review_run["corpus"], {"g0-0", "s1", "absent"}, "id", ["text", "cluster"])
    assert set(got["text"]) == {"g0-0", "s1"} and got["cluster"]["g0-0"] == "g0"


def test_load_corpus_columns_reads_json_lines_through_a_glob(tmp_path):
    rows = [{"id": 1, "meta": {"body": "first text"}}, {"id": 2, "meta": {"body": "second text"}}]
    (tmp_path / "part-0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = load_corpus_columns(str(tmp_path / "*.jsonl"), {2}, "id", ["meta.body"])
    assert got == {"meta.body": {2: "second text"}}
