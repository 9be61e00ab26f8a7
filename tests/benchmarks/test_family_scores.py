"""benchmarks/family_scores.py: exact n-gram set scores, digit folding, per-kind medians, the whole run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import family_scores as fs
import make_family_set as mfs


def _chapter(title: int, topics: list[str]) -> str:
    sections = []
    for i, topic in enumerate(topics):
        n = 100 * title + i
        lines = [f"§ {n}. Duties on {topic}"]
        lines += [f"({chr(97 + k)}) The Board shall inspect every {topic} record numbered {n}{k} within 60 days of "
                  f"filing, and may grant one extension for reasons of {topic} supply." for k in range(8)]
        lines += [f"(Pub. L. 99–{n}, § 2, Mar. 3, 2009, 123 Stat. {4100 + n}.)", "Editorial Notes"]
        sections.append("\n".join(lines))
    return f"Title {title}—COMMON MATTERS\n\nCHAPTER {title}— RULES\n\n" + "\n\n".join(sections)


CHAPTERS = [("uscode/usc/usc03.xml#ch3", _chapter(3, ["wheat", "wool", "salt"])),
            ("uscode/usc/usc05.xml#ch5", _chapter(5, ["docks", "locks", "ferries", "piers"]))]


def test_set_scores_of_known_sets() -> None:
    sets = fs.ngram_sets(["abcdefghijkl", "ABCDEFGHIJKL", "bcdefghijklm", "zzzzzzzzzzzzzz", ""], "byte", 10)
    # 3 byte 10-grams each; the second is the first after lower-casing; the third shares 2 of 3
    assert sets.shape[0] == 5 and sets[0].sum() == 3 and sets[3].sum() == 1 and sets[4].sum() == 0
    jac = fs.set_similarity(sets, "jaccard")
    cos = fs.set_similarity(sets, "cosine")
    assert jac[0, 1] == 1.0 and jac[0, 2] == pytest.approx(2 / 4) and cos[0, 2] == pytest.approx(2 / 3)
    assert jac[0, 3] == 0.0 and jac[4, 4] == 0.0 and cos[4, 0] == 0.0
    words = fs.ngram_sets(["the cat sat on the mat", "The  cat sat on the mat!"], "word", 3)
    assert fs.set_similarity(words, "jaccard")[0, 1] == 1.0
    with pytest.raises(ValueError, match="unit"):
        fs.ngram_sets(["x"], "line", 2)


def test_folding_digits_hides_a_changed_date_only() -> None:
    a = "Signed on March 4, 1990 by the parties to this agreement, who shall meet yearly."
    b = a.replace("1990", "1985")
    c = a.replace("shall", "may")
    plain = fs.similarity("byte10", [a, b, c], None)
    folded = fs.similarity("byte10-digits", [a, b, c], None)
    assert plain[0, 1] < 1.0 and folded[0, 1] == pytest.approx(1.0)
    assert folded[0, 2] < 0.95 and plain[0, 2] < 0.95  # a changed term stays visible


def test_references_and_medians() -> None:
    ids = ["s1-base", "s1-pos0", "s1-clause", "s1-clause-pos0", "s2-base", "s3-base", "s9-pos0"]
    kinds = ["base", "positive:date", "clause:modal", "variant-positive:name", "base", "base", "positive:name"]
    families = ["f", "f", "f", "f", "f", "g", "f"]
    refs = fs.reference_rows(ids, kinds, families)
    assert refs == {0: [4], 1: [0], 2: [0], 3: [2], 4: [0], 5: []}  # s9's base is not in the subset
    sim = np.eye(7)
    sim[1, 0], sim[2, 0], sim[3, 2], sim[0, 4], sim[4, 0] = 0.9, 0.95, 0.99, 0.2, 0.2
    assert fs.kind_medians(sim, kinds, refs) == {"base": 0.2, "clause:modal": 0.95, "positive:date": 0.9,
                                                "variant-positive:name": 0.99}


def test_whole_run_on_a_small_family_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = mfs.make_set(CHAPTERS, families=2, sections=3, positives=3, clause_share=1.0, variant_positives=1,
                        min_chars=500, max_chars=4000, seed=3)
    path = tmp_path / "family.parquet"
    pq.write_table(pa.table(rows), path)
    out = tmp_path / "scores.json"
    assert fs.main([str(path), "--methods", "word3,byte10-digits,lexical", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Median similarity to the reference" in printed and "clause:" in printed
    result = json.loads(out.read_text())
    assert {(r["method"], r["copy"]) for r in result["rows"]} == {
        (m, c) for m in ("word3", "byte10-digits", "lexical") for c in ("clean", "ocr")}
    for r in result["rows"]:
        assert 0.0 < r["best_f1"] <= 1.0 and r["n_docs"] == len(rows["id"])
    medians = result["medians"]["byte10-digits"]["clean"]
    assert medians["positive:layout"] == pytest.approx(1.0)  # re-wrapping changes no normalised byte
    assert medians["base"] < medians["clause:replaced"] < 1.0
    with pytest.raises(SystemExit):
        fs.main([str(path), "--methods", "minhash"])
