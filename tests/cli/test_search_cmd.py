"""``reformer-retrieval search``: text, file, id and Parquet queries; output formats."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from reformer_retrieval.cli.main import cli
from reformer_retrieval.indexes import build_index, set_threads

from reformer_retrieval.encode import Encoder

TEXTS = ["a story about a fox and a dog", "quantum chromodynamics and gluons", "zebras on the savanna",
         "invoice numbers for the second quarter"]


@pytest.fixture(autouse=True)
def _one_thread():
    before, tb = set_threads(None), torch.get_num_threads()
    set_threads(1)
    torch.set_num_threads(1)
    yield
    set_threads(before)
    torch.set_num_threads(tb)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_dir):
    root = tmp_path_factory.mktemp("s")
    model = tiny_dir
    enc = Encoder.load(model, device="cpu")
    build_index("hnsw", enc.encode(TEXTS), [f"d{i}" for i in range(4)], model_id=enc.model_id).save(root / "idx")
    return root, model


def test_text_query_table(setup):
    root, model = setup
    res = CliRunner().invoke(cli, ["search", str(root / "idx"), TEXTS[1], "-k", "2", "--model", str(model),
                                   "--device", "cpu"])
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    assert lines[0].split() == ["query", "rank", "score", "id"] and lines[1].split()[-1] == "d1"
    assert len(lines) == 3


def test_file_id_and_json(setup, tmp_path):
    root, model = setup
    f = tmp_path / "q.txt"
    f.write_text(TEXTS[3], encoding="utf-8")
    res = CliRunner().invoke(cli, ["search", str(root / "idx"), "--file", str(f), "--format", "json", "--model",
                                   str(model), "--device", "cpu", "--ef-search", "16"])
    assert res.exit_code == 0, res.output
    obj = json.loads(res.output.strip().splitlines()[0])
    assert obj["query_id"] == str(f) and obj["hits"][0]["id"] == "d3"
    res = CliRunner().invoke(cli, ["search", str(root / "idx"), "--id", "d0", "-k", "3", "--format", "json"])
    assert res.exit_code == 0, res.output  # by id: no model needed
    hits = json.loads(res.output)["hits"]
    assert len(hits) == 3 and all(h["id"] != "d0" for h in hits)


def test_queries_parquet_to_parquet(setup, tmp_path):
    root, model = setup
    q = tmp_path / "queries.parquet"
    pq.write_table(pa.table({"query_id": ["a", "b"], "text": [TEXTS[0], TEXTS[2]], "doc_id": ["d0", None]}), q)
    out = tmp_path / "hits.parquet"
    res = CliRunner().invoke(cli, ["search", str(root / "idx"), "--queries", str(q), "--exclude-column", "doc_id",
                                   "-k", "2", "--format", "parquet", "-o", str(out), "--model", str(model),
                                   "--device", "cpu"])
    assert res.exit_code == 0, res.output
    table = pq.read_table(out)
    rows = list(zip(*(table.column(c).to_pylist() for c in ("query_id", "rank", "id"))))
    assert ("a", 1, "d0") not in rows and ("b", 1, "d2") in rows and len(rows) == 4


def test_usage_errors(setup):
    root, _ = setup
    runner = CliRunner()
    res = runner.invoke(cli, ["search", str(root / "idx")])
    assert res.exit_code == 2 and "exactly one of" in res.output
    res = runner.invoke(cli, ["search", str(root / "idx"), "x", "--format", "parquet"])
    assert res.exit_code == 2 and "-o FILE" in res.output
    res = runner.invoke(cli, ["search", str(root / "idx"), "--id", "nope"])
    assert res.exit_code == 1 and "'nope' is not in the index" in res.output
    # the bundled default model did not build this index: refused with both ids
    res = runner.invoke(cli, ["search", str(root / "idx"), "some text", "--device", "cpu"])
    assert res.exit_code == 1 and "was built from model" in res.output
