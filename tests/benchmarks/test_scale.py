"""benchmarks/scale.py: the generated corpus plants what it says; a run's table row agrees with its JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import scale


def test_make_corpus_plants_groups_of_edited_copies(tmp_path):
    planted = scale.make_corpus(tmp_path / "c.parquet", 500, seed=1)
    table = pq.read_table(tmp_path / "c.parquet")
    group = table.column("group").to_numpy()
    sizes = np.bincount(group)[np.unique(group)]
    assert planted == int((sizes * (sizes - 1) // 2).sum()) > 50
    assert np.all(group[::10] == np.arange(0, 500, 10))  # every tenth document starts a group
    texts = table.column("text").to_pylist()
    a, b = set(texts[0].split()), set(texts[1].split())
    assert group[1] == 0 and len(a & b) >= 0.8 * len(a)  # a copy keeps most of its source's words
    scale.make_corpus(tmp_path / "d.parquet", 500, seed=1)
    assert pq.read_table(tmp_path / "d.parquet").equals(table)  # seeded


def test_local_run_row_and_table(tmp_path, capsys):
    assert scale.main(["--sizes", "3000", "--engines", "local", "--json", str(tmp_path / "r.json"),
                       "--work-dir", str(tmp_path / "w")]) == 0
    (row,) = json.loads((tmp_path / "r.json").read_text())
    assert row["status"] == "ok" and row["false_pairs"] == 0
    assert 0.9 * row["planted"] <= row["planted_found"] <= row["planted"]
    out = capsys.readouterr().out
    assert f"| 3000 | local | ok | {row['seconds']} |" in out
