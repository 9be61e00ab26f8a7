"""benchmarks/make_family_set.py: families of sibling sections, must-match edits, one-clause-changed variants."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import make_family_set as mfs

SHARED_CORPUS = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "corpus"


def _section(n: int, topic: str) -> str:
    lines = [f"§ {n}. Rules on {topic}"]
    for k in range(8):
        lines.append(f"({chr(97 + k)}) The Secretary shall review each {topic} filing number {n}{k} within 30 days "
                     f"of receipt, and may extend the period once for cause relating to {topic}.")
    lines.append(f"(Pub. L. 101–{n}, § {k}, Jan. 4, 2011, 124 Stat. {3800 + n}.)")
    lines.append("Editorial Notes")
    lines.append(f"Amendments made on June 8, 1974 struck out item {n}.")
    return "\n".join(lines)


def _chapter(title: int, topics: list[str]) -> str:
    head = f"Title {title}—PUBLIC MATTERS\n\nCHAPTER {title}— GENERAL RULES\n\n"
    return head + "\n\n".join(_section(100 * title + i, t) for i, t in enumerate(topics))


CHAPTERS = [
    ("uscode/usc/usc07.xml#ch7", _chapter(7, ["grain", "dairy", "cotton"])),
    ("uscode/usc/usc09.xml#ch9", _chapter(9, ["ships", "ports", "canals", "tolls"])),
]


def _rows(seed: int = 3) -> dict[str, list[str]]:
    return mfs.make_set(CHAPTERS, families=2, sections=3, positives=3, clause_share=1.0, variant_positives=1,
                        min_chars=500, max_chars=4000, seed=seed)


def test_split_chapter() -> None:
    head, sections = mfs.split_chapter(CHAPTERS[0][1])
    assert head == "Title 7—PUBLIC MATTERS\n\nCHAPTER 7— GENERAL RULES"
    assert [s.split("\n")[0] for s in sections] == ["§ 700. Rules on grain", "§ 701. Rules on dairy",
                                                    "§ 702. Rules on cotton"]


def test_make_set_structure_and_seed() -> None:
    rows = _rows()
    assert rows == _rows() and rows != _rows(seed=4)
    assert set(rows["family"]) == {c for c, _ in CHAPTERS}
    bases = [i for i, k in enumerate(rows["kind"]) if k == "base"]
    assert len(bases) == 6  # three sections of each chapter
    for i in bases:
        cluster, family, base = rows["cluster"][i], rows["family"][i], rows["text"][i]
        assert base.startswith("Prepared for: ") and "CHAPTER" in base
        same = [j for j, c in enumerate(rows["cluster"]) if c == cluster and j != i]
        assert len(same) == 3 and all(rows["kind"][j].startswith("positive:") for j in same)
        assert all(rows["text"][j] != base and rows["family"][j] == family for j in same)
        variants = [j for j, c in enumerate(rows["cluster"]) if c.startswith(cluster + "~")]
        assert len(variants) == 2  # the clause variant and its own copy, in a cluster of their own
        assert {rows["kind"][j].split(":")[0] for j in variants} == {"clause", "variant-positive"}
        assert all(rows["family"][j] == family and rows["text"][j] != base for j in variants)
    assert len(set(rows["id"])) == len(rows["id"])
    # siblings of one family share the chapter header but are different clusters
    fam = [i for i in bases if rows["family"][i] == CHAPTERS[1][0]]
    assert len({rows["cluster"][i] for i in fam}) == 3


def _parts() -> tuple[dict, str, str]:
    head, sections = mfs.split_chapter(CHAPTERS[0][1])
    block = mfs._block(np.random.default_rng(0))
    return block, head, sections[0]


def test_positive_edits_change_only_what_may_not_matter() -> None:
    block, head, section = _parts()
    base = mfs._document(block, head, section)
    rng = np.random.default_rng(1)
    edited = {k: mfs.positive_edit(k, block, head, section, rng) for k in mfs.POSITIVE_EDITS}
    assert all(text != base for text in edited.values())
    changed = {k: [a for a, b in zip(base.split("\n"), t.split("\n")) if a != b] for k, t in edited.items()}
    assert [ln[:14] for ln in changed["name"]] == ["Prepared for: "]
    assert [ln[:9] for ln in changed["address"]] == ["Address: "]
    assert changed["date"][0].startswith("Date: ") and any("Stat." in ln for ln in changed["date"][1:])
    assert "".join(edited["layout"].split()) == "".join(base.split())  # only whitespace moved
    assert base in edited["header_added"] and edited["header_added"].startswith("Title 7—PUBLIC MATTERS")
    assert edited["header_removed"] == base.split("\n\n", 1)[1]  # the template block is gone, nothing else


def test_clause_edits_change_one_substantive_thing() -> None:
    _, sections = mfs.split_chapter(CHAPTERS[0][1])
    section, sibling = sections[0], sections[1]
    rng = np.random.default_rng(2)
    lines = section.split("\n")
    number, made = mfs.clause_edit("number", section, sibling, rng)
    assert made == "number" and "30 days" in section and number.count("30 days") == section.count("30 days") - 1
    modal, made = mfs.clause_edit("modal", section, sibling, rng)
    assert made == "modal" and modal != section and len(modal.split("\n")) == len(lines)
    deleted, made = mfs.clause_edit("deleted", section, sibling, rng)
    assert made == "deleted" and len(deleted.split("\n")) == len(lines) - 1
    inserted, made = mfs.clause_edit("inserted", section, sibling, rng)
    new = [ln for ln in inserted.split("\n") if ln not in lines]
    assert made == "inserted" and len(new) == 1 and new[0] in sibling.split("\n")
    replaced, made = mfs.clause_edit("replaced", section, sibling, rng)
    diff = [(a, b) for a, b in zip(lines, replaced.split("\n")) if a != b]
    assert made == "replaced" and len(diff) == 1 and diff[0][1] in sibling.split("\n")
    # nothing to change for "number": falls back to a replaced line, and says so
    plain = "§ 1. Plain\n" + "\n".join(f"Line {w} of the plain section without any quantity here." for w in "abc")
    _, made = mfs.clause_edit("number", plain, sibling, rng)
    assert made == "replaced"


def test_main_writes_parquet_and_names_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    pq.write_table(pa.table({"id": [c for c, _ in CHAPTERS] + ["elife/x"], "text": [t for _, t in CHAPTERS] + ["x"],
                             "source": ["uscode", "uscode", "elife"]}), corpus / "train-00000.parquet")
    out = tmp_path / "family.parquet"
    argv = ["--corpus", str(corpus), "--out", str(out), "--min-chars", "500", "--families", "2"]
    assert mfs.main(argv) == 0
    table = pq.read_table(out)
    assert table.column_names == ["id", "text", "cluster", "family", "kind"] and table.num_rows >= 12
    assert mfs.main([*argv, "--text-column", "body"]) == 2
    assert "no column 'body'" in capsys.readouterr().err
    assert mfs.main([*argv[:4], "--min-chars", "100000"]) == 2
    assert "no chapter has two sections" in capsys.readouterr().err
    assert mfs.main(["--corpus", str(tmp_path / "none"), "--out", str(out)]) == 2


@pytest.mark.slow  # reads the whole corpus folder (~8 s)
@pytest.mark.skipif(not SHARED_CORPUS.is_dir(), reason="needs ../shared/data/corpus")
def test_real_corpus_small() -> None:
    rows = mfs.make_set(mfs.read_uscode(SHARED_CORPUS), families=2, sections=2, seed=0)
    assert len(set(rows["family"])) == 2 and all(f.startswith("uscode/") for f in rows["family"])
    assert any(k.startswith("clause:") for k in rows["kind"])
