"""benchmarks/star_recall.py on the bundled sample (MinHash): both edge modes keep every co-clustered pair."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import star_recall


def test_sample_minhash_rows(tmp_path, capsys):
    assert star_recall.main(["--cases", "minhash", "--json", str(tmp_path / "r.json")]) == 0
    rows = json.loads((tmp_path / "r.json").read_text())
    assert [r["edges"] for r in rows] == ["star", "star+path"]
    for r in rows:
        assert r["co_clustered_all"] == r["co_clustered_kept"] == 26 and r["star_recall_of_all_pairs"] == 1.0
        assert r["all"]["f1"] == r["star"]["f1"] == 1.0
    assert "| minhash | star+path | 158 | 26 | 26 | 26 / 26 (1.0000) |" in capsys.readouterr().out
