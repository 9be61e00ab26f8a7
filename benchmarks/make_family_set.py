"""Make the fine-grained families dev set: sections that share boilerplate but differ in substance, and copies
that differ only in names, dates, addresses, layout or a header (see docs/family_set.md).

Source: the U.S. Code chapters of the training corpus (``source == "uscode"``; public domain, 17 U.S.C. 105).
The corpus is read from ``--corpus`` (a Parquet file or a folder of them); nothing of it is bundled here.
Output: a labelled Parquet (``id``, ``text``, ``cluster``, ``family``, ``kind``) for ``model_quality.py --data``
and ``dedup_quality.py --data``. Pairs in one ``cluster`` must match; pairs in one ``family`` but different
clusters are the hard negatives.

* **family** = one U.S. Code chapter. Its **bases** are up to ``--sections`` sibling sections (each cut to
  ``--max-chars`` at a line end), each preceded by the chapter's title lines and a filled-in template block
  (a person's name, a street address and a date), so siblings share the chapter header, the block's layout,
  the statute style and the editorial-note boilerplate, and differ in substance. Each base is a cluster.
* **positives** (same cluster as their base; ``kind`` = ``positive:<edit>``): ``--positives`` copies, each with
  one seeded edit that must not matter: ``name`` (another person), ``date`` (the block's date and up to three
  dates of the text), ``address`` (house number and ZIP code), ``layout`` (lines re-wrapped at another width,
  extra blank lines and trailing spaces), ``header_added`` (a running header and a footer),
  ``header_removed`` (the template block taken out).
* **clause variants** (a new cluster each, same family; ``kind`` = ``clause:<edit>``): for a ``--clause-share``
  of the bases, one copy with one substantive change: ``replaced`` (one clause line swapped for a line of a
  sibling section), ``deleted`` (one clause line removed), ``inserted`` (a sibling's clause line added),
  ``number`` (a period, amount or percentage that matters changed, e.g. 30 days -> 90 days), ``modal``
  (one "shall" <-> "may", or "shall not" -> "shall"). Each variant gets ``--variant-positives`` copies of its
  own (``kind`` = ``variant-positive:<edit>``), so the set asks for the template-with-a-changed-term case both
  ways: the copies of a variant must match it and not its base.

Every random choice comes from ``--seed``::

    python benchmarks/make_family_set.py --out /work/notes/family.parquet
    python benchmarks/model_quality.py --data /work/notes/family.parquet
    python benchmarks/dedup_quality.py --data /work/notes/family.parquet
"""

from __future__ import annotations

import argparse
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CLAUSE_EDITS",
    "POSITIVE_EDITS",
    "FamilySetError",
    "clause_edit",
    "main",
    "make_set",
    "positive_edit",
    "read_uscode",
    "split_chapter",
]

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = REPO / ".." / "shared" / "data" / "corpus"
POSITIVE_EDITS = ("name", "date", "address", "layout", "header_added", "header_removed")
CLAUSE_EDITS = ("replaced", "deleted", "inserted", "number", "modal")

FIRST = ("Maria", "James", "Aisha", "Chen", "Olga", "Pedro", "Fatima", "Liam", "Grace", "Tomas", "Nadia",
         "Samuel", "Ingrid", "Kofi", "Elena", "Ravi", "Hannah", "Mateo", "Yuki", "Daniel")
LAST = ("Lopez", "Okafor", "Schmidt", "Nguyen", "Haddad", "Kowalski", "Brennan", "Silva", "Ivanova", "Mensah",
        "Lindqvist", "Tanaka", "Moreau", "Patel", "Quinn", "Rossi", "Andersen", "Morales", "Kaplan", "Obi")
STREETS = ("Oak Street", "Maple Avenue", "Harbor Road", "Elm Court", "Cedar Lane", "Mill Road", "Park Place",
           "River Drive", "Hillcrest Way", "Union Street")
CITIES = (("Springfield", "IL"), ("Fairview", "OR"), ("Madison", "WI"), ("Georgetown", "TX"), ("Salem", "MA"),
          ("Clinton", "IA"), ("Franklin", "TN"), ("Arlington", "VA"), ("Greenville", "SC"), ("Dayton", "OH"))
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
ABBREV = ("Jan.", "Feb.", "Mar.", "Apr.", "May", "June", "July", "Aug.", "Sept.", "Oct.", "Nov.", "Dec.")
_DATE = re.compile(r"\b(" + "|".join(re.escape(m) for m in MONTHS + ABBREV) + r")\s(\d{1,2}),\s(\d{4})\b")
_SECTION = re.compile(r"(?m)^(?=§\s*\d)")
_NOTES = re.compile(r"(?m)^(\(Pub\. L\.|Historical and Revision Notes|Editorial Notes|Statutory Notes)")
_QUANTITY = re.compile(
    r"\b(\d[\d,]*)(\s|-)(days?|months?|years?|hours?|weeks?|percent|calendar days|business days)\b"
    r"|\$(\d[\d,]*)|\b(\d+)\s?%"
)
_WORDS = ("two", "three", "four", "five", "six", "seven", "ten", "twelve", "fifteen", "twenty", "thirty", "sixty",
          "ninety")
_SPELLED = re.compile(r"\b(" + "|".join(_WORDS) + r")(\s|-)(days?|months?|years?|members?|weeks?|hours?|percent|"
                      r"calendar days|business days|consecutive)\b", re.IGNORECASE)
_MODAL = re.compile(r"\b(shall not|shall|may)\b")


class FamilySetError(ValueError):
    """Bad input to the family-set builder (the message names the file, column or row)."""


# ---------------------------------------------------------------------------------------------- reading
def read_uscode(path: str | Path, text_column: str = "text") -> list[tuple[str, str]]:
    """``(id, text)`` of every U.S. Code chapter (``source == "uscode"``) of a Parquet file or folder, by id."""
    import glob

    import pyarrow.dataset as ds

    path = Path(path)
    files = sorted(glob.glob(str(path / "*.parquet"))) if path.is_dir() else [str(path)]
    if not files or not Path(files[0]).is_file():
        raise FamilySetError(f"{path}: no Parquet file there (pass --corpus)")
    dataset = ds.dataset(files, format="parquet")
    for column in ("id", "source", text_column):
        if column not in dataset.schema.names:
            raise FamilySetError(f"{path}: no column {column!r} (has {', '.join(dataset.schema.names)})")
    table = dataset.to_table(columns=["id", text_column], filter=ds.field("source") == "uscode")
    rows = sorted(zip(table.column("id").to_pylist(), table.column(text_column).to_pylist()))
    for row_id, text in rows:
        if not isinstance(text, str):
            raise FamilySetError(f"{path}: row {row_id!r} has no text")
    return rows


def split_chapter(text: str) -> tuple[str, list[str]]:
    """The chapter's title lines (the first two non-empty lines) and its sections (from each ``§ N`` line)."""
    parts = _SECTION.split(text)
    head_lines = [ln.strip() for ln in parts[0].splitlines() if ln.strip()][:2]
    return "\n\n".join(head_lines), [p.strip() for p in parts[1:]]


def _cut(text: str, max_chars: int) -> str:
    """``text`` cut to at most ``max_chars`` at a line end (whole when shorter)."""
    if len(text) <= max_chars:
        return text
    end = text.rfind("\n", 0, max_chars)
    return text[: end if end > max_chars // 2 else max_chars].rstrip()


def _clause_lines(section: str) -> list[int]:
    """Indices of the substantive lines of a section: statute lines (before the notes) of >= 40 characters,
    not the heading; all long lines when the statute part has fewer than two."""
    lines = section.split("\n")
    notes = _NOTES.search(section)
    stop = section[: notes.start()].count("\n") if notes else len(lines)
    picks = [i for i in range(1, stop) if len(lines[i].strip()) >= 40]
    if len(picks) < 2:
        picks = [i for i in range(1, len(lines)) if len(lines[i].strip()) >= 40]
    return picks


# ---------------------------------------------------------------------------------------------- template
def _person(rng: np.random.Generator) -> str:
    return f"{FIRST[rng.integers(len(FIRST))]} {LAST[rng.integers(len(LAST))]}"


def _date(rng: np.random.Generator, abbrev: bool = False) -> str:
    month = int(rng.integers(12))
    names = ABBREV if abbrev else MONTHS
    return f"{names[month]} {int(rng.integers(1, 29))}, {int(rng.integers(1990, 2025))}"


def _block(rng: np.random.Generator) -> dict[str, Any]:
    city, state = CITIES[rng.integers(len(CITIES))]
    return {"name": _person(rng), "number": int(rng.integers(10, 9900)), "street": STREETS[rng.integers(len(STREETS))],
            "city": city, "state": state, "zip": int(rng.integers(10000, 99999)), "date": _date(rng)}


def _render_block(b: dict[str, Any]) -> str:
    return (f"Prepared for: {b['name']}\nAddress: {b['number']} {b['street']}, {b['city']}, {b['state']} {b['zip']:05d}\n"
            f"Date: {b['date']}")


def _document(block: dict[str, Any] | None, chapter_head: str, section: str) -> str:
    parts = ([_render_block(block)] if block is not None else []) + [chapter_head, section]
    return "\n\n".join(parts)


# ---------------------------------------------------------------------------------------------- edits
def _other(rng: np.random.Generator, make: Any, old: Any) -> Any:
    for _ in range(100):
        new = make(rng)
        if new != old:
            return new
    raise RuntimeError("no different value drawn")  # pragma: no cover - lists have > 1 value


def _relayout(text: str, rng: np.random.Generator) -> str:
    """Lines re-wrapped at a random width, some blank lines doubled, trailing spaces here and there."""
    width = int(rng.integers(48, 96))
    out: list[str] = []
    for line in text.split("\n"):
        wrapped = textwrap.wrap(line, width=width, break_long_words=False, break_on_hyphens=False) or [""]
        for w in wrapped:
            out.append(w + (" " * int(rng.integers(1, 4)) if rng.random() < 0.15 else ""))
        if not line.strip() and rng.random() < 0.3:
            out.append("")
    return "\n".join(out)


def positive_edit(kind: str, block: dict[str, Any] | None, chapter_head: str, section: str,
                  rng: np.random.Generator) -> str:
    """A copy of ``_document(block, chapter_head, section)`` with one edit that must not change the match."""
    if kind not in POSITIVE_EDITS:
        raise ValueError(f"unknown positive edit {kind!r} (one of {', '.join(POSITIVE_EDITS)})")
    b = dict(block) if block is not None else None
    if kind == "name" and b is not None:
        b["name"] = _other(rng, _person, b["name"])
    elif kind == "address" and b is not None:
        b["number"] = _other(rng, lambda r: int(r.integers(10, 9900)), b["number"])
        b["zip"] = _other(rng, lambda r: int(r.integers(10000, 99999)), b["zip"])
    elif kind == "date":
        if b is not None:
            b["date"] = _other(rng, _date, b["date"])
        matches = list(_DATE.finditer(section))
        chosen = sorted(rng.choice(len(matches), size=min(3, len(matches)), replace=False).tolist()) if matches else []
        for k in reversed(chosen):  # from the end, so earlier offsets stay valid
            m = matches[k]
            abbrev = m.group(1) in ABBREV
            new = _other(rng, lambda r, a=abbrev: _date(r, a), m.group(0))
            section = section[: m.start()] + new + section[m.end() :]
    elif kind == "header_removed":
        b = None
    text = _document(b, chapter_head, section)
    if kind == "layout":
        text = _relayout(text, rng)
    elif kind == "header_added":
        title = chapter_head.split("\n")[0]
        header = f"{title} — UNOFFICIAL COPY\nPage 1 of {int(rng.integers(2, 9))}"
        footer = f"Printed {_date(rng)}. This copy is provided for reference only and is not an official text."
        text = f"{header}\n\n{text}\n\n{footer}"
    return text


def _change_number(section: str, rng: np.random.Generator) -> str | None:
    """``section`` with one quantity (digits, a dollar amount, a percentage or a spelled-out count of days,
    months, years, members ...) changed, or None when it has none."""
    matches = list(_QUANTITY.finditer(section))
    spelled = list(_SPELLED.finditer(section))
    if spelled and (not matches or rng.random() < len(spelled) / (len(spelled) + len(matches))):
        m = spelled[int(rng.integers(len(spelled)))]
        old = m.group(1)
        new = _other(rng, lambda r: _WORDS[int(r.integers(len(_WORDS)))], old.lower())
        new = new.capitalize() if old[0].isupper() else new
        return section[: m.start(1)] + new + section[m.end(1) :]
    if not matches:
        return None
    m = matches[int(rng.integers(len(matches)))]
    group = next(g for g in (1, 4, 5) if m.group(g) is not None)
    old = int(m.group(group).replace(",", ""))
    factor = [2, 3, 5, 10][int(rng.integers(4))]
    new = old * factor if rng.random() < 0.5 or old < factor else max(1, old // factor)
    new_text = f"{new:,}" if "," in m.group(group) else str(new)
    return section[: m.start(group)] + new_text + section[m.end(group) :]


def clause_edit(kind: str, section: str, sibling: str, rng: np.random.Generator) -> tuple[str, str]:
    """``section`` with one substantive change, and the edit made (``kind``, or ``replaced`` where a ``number`` or
    ``modal`` edit finds nothing to change). ``sibling`` is another section of the chapter (source of lines)."""
    if kind not in CLAUSE_EDITS:
        raise ValueError(f"unknown clause edit {kind!r} (one of {', '.join(CLAUSE_EDITS)})")
    if kind == "number":
        changed = _change_number(section, rng)
        if changed is not None:
            return changed, kind
        kind = "replaced"
    if kind == "modal":
        found = list(_MODAL.finditer(section))
        if found:
            m = found[int(rng.integers(len(found)))]
            new = {"shall not": "shall", "shall": "may", "may": "shall"}[m.group(1)]
            return section[: m.start()] + new + section[m.end() :], kind
        kind = "replaced"
    lines = section.split("\n")
    picks = _clause_lines(section)
    donor = [ln for ln in (sibling.split("\n")[i] for i in _clause_lines(sibling)) if ln not in lines]
    if kind == "deleted" and len(picks) >= 2:
        del lines[picks[int(rng.integers(len(picks)))]]
        return "\n".join(lines), kind
    if not donor or not picks:
        # nothing to swap in: delete a line (a section has at least a heading and a body)
        del lines[picks[int(rng.integers(len(picks)))] if picks else len(lines) - 1]
        return "\n".join(lines), "deleted"
    new_line = donor[int(rng.integers(len(donor)))]
    at = picks[int(rng.integers(len(picks)))]
    if kind == "inserted":
        lines.insert(at + int(rng.integers(2)), new_line)
        return "\n".join(lines), kind
    lines[at] = new_line
    return "\n".join(lines), "replaced"


# ---------------------------------------------------------------------------------------------- the set
def make_set(
    chapters: list[tuple[str, str]],
    families: int = 40,
    sections: int = 4,
    positives: int = 3,
    clause_share: float = 0.75,
    variant_positives: int = 1,
    min_chars: int = 1200,
    max_chars: int = 6000,
    seed: int = 0,
) -> dict[str, list[str]]:
    """Rows (``id``, ``text``, ``cluster``, ``family``, ``kind``) of the set (see the module doc).

    ``chapters`` are ``(id, text)`` of U.S. Code chapters; a chapter is a family when it has at least two
    sections of ``min_chars`` or more. Families are a seeded choice of ``families`` of them.
    """
    if positives > len(POSITIVE_EDITS) or variant_positives > len(POSITIVE_EDITS):
        raise ValueError(f"at most {len(POSITIVE_EDITS)} positives per document (one per edit type)")
    rng = np.random.default_rng(seed)
    eligible = []
    for chapter_id, text in sorted(chapters):
        head, secs = split_chapter(text)
        secs = [_cut(s, max_chars) for s in secs if len(s) >= min_chars]
        if len(secs) >= 2 and head:
            eligible.append((chapter_id, head, secs))
    if not eligible:
        raise FamilySetError(f"no chapter has two sections of {min_chars}+ characters")
    chosen = [eligible[i] for i in sorted(rng.permutation(len(eligible))[:families].tolist())]
    rows: dict[str, list[str]] = {"id": [], "text": [], "cluster": [], "family": [], "kind": []}

    def add(row_id: str, text: str, cluster: str, family: str, kind: str) -> None:
        for key, value in zip(rows, (row_id, text, cluster, family, kind)):
            rows[key].append(value)

    clause_cycle = rng.permutation(len(CLAUSE_EDITS)).tolist()
    n_clause = 0
    for f, (chapter_id, head, secs) in enumerate(chosen):
        picked = sorted(rng.choice(len(secs), size=min(sections, len(secs)), replace=False).tolist())
        for s in picked:
            section = secs[s]
            number = re.match(r"§\s*([\w.\-–]+)", section)
            cluster = f"{chapter_id}/§{number.group(1).rstrip('.') if number else s}"
            base_id = f"f{f:03d}-s{s:03d}"
            block = _block(rng)
            add(f"{base_id}-base", _document(block, head, section), cluster, chapter_id, "base")
            for p, edit in enumerate(rng.permutation(len(POSITIVE_EDITS))[:positives].tolist()):
                kind = POSITIVE_EDITS[edit]
                add(f"{base_id}-pos{p}", positive_edit(kind, block, head, section, rng), cluster, chapter_id,
                    f"positive:{kind}")
            if rng.random() >= clause_share:
                continue
            sibling = secs[[i for i in picked if i != s][int(rng.integers(len(picked) - 1))]] if len(picked) > 1 \
                else secs[(s + 1) % len(secs)]
            wanted = CLAUSE_EDITS[clause_cycle[n_clause % len(CLAUSE_EDITS)]]
            n_clause += 1
            changed, made = clause_edit(wanted, section, sibling, rng)
            if changed == section:
                continue
            v_cluster = f"{cluster}~{made}"
            add(f"{base_id}-clause", _document(block, head, changed), v_cluster, chapter_id, f"clause:{made}")
            for p, edit in enumerate(rng.permutation(len(POSITIVE_EDITS))[:variant_positives].tolist()):
                kind = POSITIVE_EDITS[edit]
                add(f"{base_id}-clause-pos{p}", positive_edit(kind, block, head, changed, rng), v_cluster,
                    chapter_id, f"variant-positive:{kind}")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS,
                   help="Parquet file or folder with id, source, text columns (default ../shared/data/corpus)")
    p.add_argument("--out", "-o", type=Path, required=True, help="labelled Parquet to write")
    p.add_argument("--text-column", default="text")
    p.add_argument("--families", type=int, default=40, help="chapters (families) to take")
    p.add_argument("--sections", type=int, default=4, help="sibling sections (bases) per family")
    p.add_argument("--positives", type=int, default=3, help="must-match copies per base (distinct edits)")
    p.add_argument("--clause-share", type=float, default=0.75, help="share of bases given a clause variant")
    p.add_argument("--variant-positives", type=int, default=1, help="must-match copies per clause variant")
    p.add_argument("--min-chars", type=int, default=1200, help="shortest section taken")
    p.add_argument("--max-chars", type=int, default=6000, help="sections cut to this many characters")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        chapters = read_uscode(args.corpus, args.text_column)
        rows = make_set(chapters, args.families, args.sections, args.positives, args.clause_share,
                        args.variant_positives, args.min_chars, args.max_chars, args.seed)
    except (FamilySetError, ValueError) as exc:
        print(f"make_family_set: {exc}", file=sys.stderr)
        return 2
    import pyarrow as pa
    import pyarrow.parquet as pq

    from reformer_retrieval.atomic import atomic_path

    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out, ".parquet") as tmp:
        pq.write_table(pa.table(rows), tmp)
    kinds: dict[str, int] = {}
    for k in rows["kind"]:
        kinds[k] = kinds.get(k, 0) + 1
    print(f"wrote {len(rows['id'])} documents, {len(set(rows['cluster']))} clusters, {len(set(rows['family']))} "
          f"families, {sum(len(t) for t in rows['text']):,} characters to {args.out}")
    print("kinds: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
