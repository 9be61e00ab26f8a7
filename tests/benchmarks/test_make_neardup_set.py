"""benchmarks/make_neardup_set.py: seeded bases, variants in their base's cluster, prefix traps on their own."""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import make_neardup_set


def _texts() -> list[str]:
    words = [f"alpha{i} beta{i % 7} gamma{i % 11}." for i in range(400)]
    return [" ".join(words[k::3]) * 3 for k in range(3)] + ["too short"]


def test_make_set_structure_and_seed() -> None:
    rows = make_neardup_set.make_set(_texts(), chars=1500, windows=2, variants=2, trap_share=1.0, seed=4)
    assert rows == make_neardup_set.make_set(_texts(), chars=1500, windows=2, variants=2, trap_share=1.0, seed=4)
    bases = [i for i, k in enumerate(rows["kind"]) if k == "base"]
    assert len(bases) == 6  # two windows from each of the three long documents, none from the short one
    for i in bases:
        cluster = rows["cluster"][i]
        members = [j for j, c in enumerate(rows["cluster"]) if c == cluster]
        assert [rows["kind"][j] for j in members] == ["base", "variant", "variant"]
        assert all(len(rows["text"][j]) > 0 and rows["text"][j] != rows["text"][i] for j in members[1:])
    traps = [i for i, k in enumerate(rows["kind"]) if k == "prefix_trap"]
    assert len(traps) == 6
    for i in traps:
        base = rows["text"][rows["id"].index(rows["id"][i].replace("-trap", "-base"))]
        assert rows["text"][i][:450] == base[:450] and rows["text"][i] != base
        assert rows["cluster"].count(rows["cluster"][i]) == 1


def test_main_writes_parquet(tmp_path: Path) -> None:
    src = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"text": _texts()}), src)
    out = tmp_path / "set.parquet"
    assert make_neardup_set.main([str(src), "-o", str(out), "--chars", "1500", "--variants", "1"]) == 0
    table = pq.read_table(out)
    assert table.column_names == ["id", "text", "cluster", "kind"] and table.num_rows >= 6
    assert make_neardup_set.main([str(src), "-o", str(out), "--chars", "10000000"]) == 2
    assert make_neardup_set.main([str(src), "-o", str(out), "--text-column", "body"]) == 2
    assert make_neardup_set.main([str(tmp_path / "none.parquet"), "-o", str(out)]) == 2
