"""Reviewer marks: reading JSON Lines / CSV, precision on marked pairs, keep_apart and dedup --exclude-pairs."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from reformer_retrieval.cli.main import cli

from reformer_retrieval.dedup import find_duplicates
from reformer_retrieval.marks import keep_apart, marks_precision, not_duplicate_pairs, read_marks

MARKS = [
    {"id_a": "a", "id_b": "b", "mark": "duplicate", "merged": True, "score": 0.9},
    {"id_a": "a", "id_b": "c", "mark": "not_duplicate", "merged": True, "score": 0.5},
    {"id_a": "d", "id_b": "e", "mark": "duplicate", "merged": False, "score": 0.3},
]


def test_read_jsonl_and_csv_agree(tmp_path):
    jl = tmp_path / "m.jsonl"
    jl.write_text("\n".join(json.dumps(m) for m in MARKS) + "\n")
    cs = tmp_path / "m.csv"
    cs.write_text("id_a,id_b,mark,merged,score\n" + "".join(
        f"{m['id_a']},{m['id_b']},{m['mark']},{str(m['merged']).lower()},{m['score']}\n" for m in MARKS))
    for path in (jl, cs):
        marks = read_marks(path)
        assert [(m.id_a, m.id_b, m.mark, m.merged, m.score) for m in marks] == [
            (m["id_a"], m["id_b"], m["mark"], m["merged"], m["score"]) for m in MARKS]
        p = marks_precision(marks)
        assert (p.marked, p.merged, p.merged_duplicates, p.precision, p.missed_duplicates) == (3, 2, 1, 0.5, 1)
        assert not_duplicate_pairs(marks) == [("a", "c")]


def test_read_marks_names_the_bad_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(MARKS[0]) + "\n" + json.dumps({**MARKS[1], "mark": "maybe"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: mark 'maybe'"):
        read_marks(bad)
    no_col = tmp_path / "bad.csv"
    no_col.write_text("id_a,id_b\nx,y\n")
    with pytest.raises(ValueError, match="no column 'mark'"):
        read_marks(no_col)


def test_keep_apart_splits_a_chain_at_its_weakest_edge():
    ids = ["a", "b", "c", "d", "z"]
    pairs = np.array([[0, 1], [1, 2], [2, 3]])
    score = np.array([0.9, 0.6, 0.8])
    keep = keep_apart(ids, pairs, score, [("d", "a")])  # a-b-c-d: a and d must part; weakest link b-c goes
    assert keep.tolist() == [True, False, True]
    assert keep_apart(ids, pairs, score, [("a", "z"), ("x", "y")]).all()  # already apart / unknown ids
    direct = keep_apart(ids, pairs, score, [("c", "b")])
    assert direct.tolist() == [True, False, True]


def test_find_duplicates_exclude_pairs_keeps_marked_pair_apart():
    vectors = np.eye(4, dtype=np.float32)[[0, 0, 0, 1]]
    vectors[1] = np.array([0.99, 0.14, 0, 0], np.float32) / np.linalg.norm([0.99, 0.14])
    ids = ["p", "q", "r", "s"]
    before = find_duplicates(ids, vectors=vectors, threshold=0.9, keep="first")
    assert before.cluster_id[0] == before.cluster_id[1] == before.cluster_id[2]
    after = find_duplicates(ids, vectors=vectors, threshold=0.9, keep="first", exclude_pairs=[("q", "p")])
    assert after.cluster_id[0] != after.cluster_id[1]
    assert after.summary["excluded_pairs"] >= 1
    assert len(after.pair_a) == len(before.pair_a) - after.summary["excluded_pairs"]


def test_dedup_cli_exclude_pairs(tmp_path):
    story = "the quick brown fox jumps over the lazy dog near the river bank in the morning light " * 3
    corpus = tmp_path / "c.parquet"
    pq.write_table(pa.table({"id": [1, 2, 3], "text": [story, story + " again", "zebras graze on the plain"]}), corpus)
    marks = tmp_path / "m.csv"
    marks.write_text("id_a,id_b,mark\n1,2,not_duplicate\n")
    args = ["dedup", str(corpus), "--method", "minhash", "--threshold", "0.5", "-q"]
    res = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "o1")])
    assert res.exit_code == 0 and "3 documents -> 2 clusters" in res.output, res.output
    res = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "o2"), "--exclude-pairs", str(marks)])
    assert res.exit_code == 0 and "3 documents -> 3 clusters" in res.output, res.output
    summary = json.loads((tmp_path / "o2" / "summary.json").read_text())
    assert summary["excluded_pairs"] == 1
    assert summary["corpus"]["path"] == str(corpus.resolve())
