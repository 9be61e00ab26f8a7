"""Reviewer marks on document pairs: read them, score a run with them, and keep marked non-duplicates apart.

A marks file comes from the review page (`reformer-retrieval report`, buttons "duplicate" / "not
duplicate", then "export"): JSON Lines (one object a line) or CSV (a header row), with the columns

* ``id_a``, ``id_b``: the two documents (order does not matter);
* ``mark``: ``"duplicate"`` or ``"not_duplicate"``;
* ``merged`` (optional): whether the reviewed run put the pair in one cluster;
* ``score`` (optional): the pair's score in the report (cosine or Jaccard).

`marks_precision` reports the precision of the run on the pairs it merged and a reviewer marked;
`keep_apart` is the post-filter `reformer_retrieval.dedup.find_duplicates` runs on the verified pairs
(``exclude_pairs=``) so that a pair marked ``not_duplicate`` ends in two clusters on the next run.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "MARK_VALUES",
    "Mark",
    "MarksPrecision",
    "keep_apart",
    "marks_precision",
    "not_duplicate_pairs",
    "read_marks",
]

#: The two marks a reviewer gives a pair.
MARK_VALUES = ("duplicate", "not_duplicate")

_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no", ""}


@dataclass(frozen=True)
class Mark:
    """One reviewed pair."""

    id_a: Any
    id_b: Any
    mark: str
    merged: bool | None = None
    score: float | None = None

    @property
    def is_duplicate(self) -> bool:
        """True for ``mark == "duplicate"``."""
        return self.mark == "duplicate"


def _parse_bool(value: Any, where: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return None if text == "" else False
    raise ValueError(f"{where}: 'merged' is {value!r}, not true/false")


def _parse_score(value: Any, where: str) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: 'score' is {value!r}, not a number") from None


def _mark_from(row: dict[str, Any], where: str) -> Mark:
    for key in ("id_a", "id_b", "mark"):
        if row.get(key) is None or row.get(key) == "":
            raise ValueError(f"{where}: no {key!r}")
    mark = str(row["mark"]).strip().lower().replace("-", "_").replace(" ", "_")
    if mark not in MARK_VALUES:
        raise ValueError(f"{where}: mark {row['mark']!r} is not one of {', '.join(MARK_VALUES)}")
    return Mark(row["id_a"], row["id_b"], mark, _parse_bool(row.get("merged"), where),
                _parse_score(row.get("score"), where))


def read_marks(path: str | Path) -> list[Mark]:
    """The marks of a JSON Lines or CSV file (chosen by the first non-blank character: ``{`` is JSON Lines).

    A pair marked twice keeps its last mark (the page exports one row per pair; a hand-joined file
    may repeat one). Raises ``ValueError`` naming the file and line of a bad row.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    rows: list[tuple[str, dict[str, Any]]] = []
    if text.lstrip().startswith("{"):
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: not a JSON object")
            rows.append((f"{path}:{lineno}", row))
    else:
        reader = csv.DictReader(text.splitlines())
        missing = [c for c in ("id_a", "id_b", "mark") if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: no column {missing[0]!r} (a marks file has id_a, id_b, mark)")
        rows = [(f"{path}:{i}", row) for i, row in enumerate(reader, start=2)]
    last: dict[frozenset[str], Mark] = {}
    for where, row in rows:
        mark = _mark_from(row, where)
        last[frozenset((str(mark.id_a), str(mark.id_b)))] = mark
    return list(last.values())


def not_duplicate_pairs(marks: Iterable[Mark]) -> list[tuple[Any, Any]]:
    """The ``(id_a, id_b)`` of every pair marked ``not_duplicate``."""
    return [(m.id_a, m.id_b) for m in marks if m.mark == "not_duplicate"]


@dataclass
class MarksPrecision:
    """The run's quality on reviewed pairs.

    Attributes:
        marked: Pairs marked.
        merged: Marked pairs the run merged (``merged`` true).
        merged_duplicates: Of those, the ones marked duplicate.
        precision: ``merged_duplicates / merged`` (None when no merged pair was marked).
        missed_duplicates: Pairs marked duplicate that the run kept apart (below its threshold).
        unknown_merged: Marked pairs without a ``merged`` value (not counted above).
    """

    marked: int
    merged: int
    merged_duplicates: int
    precision: float | None
    missed_duplicates: int
    unknown_merged: int

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for JSON)."""
        return asdict(self)


def marks_precision(marks: Sequence[Mark]) -> MarksPrecision:
    """Precision of the reviewed run on the marked pairs it merged, and the marked duplicates it missed."""
    merged = [m for m in marks if m.merged is True]
    apart = [m for m in marks if m.merged is False]
    good = sum(m.is_duplicate for m in merged)
    return MarksPrecision(
        marked=len(marks), merged=len(merged), merged_duplicates=good,
        precision=good / len(merged) if merged else None,
        missed_duplicates=sum(m.is_duplicate for m in apart),
        unknown_merged=sum(m.merged is None for m in marks),
    )


def _rows_of(ids: Sequence[Any], pairs: Iterable[tuple[Any, Any]]) -> list[tuple[int, int]]:
    """Row pairs of the id pairs whose ids are both in ``ids`` (ids also matched by their text, for CSV)."""
    position = {d: i for i, d in enumerate(ids)}
    by_text = {str(d): i for i, d in enumerate(ids)}
    out = []
    for a, b in pairs:
        ra = position.get(a, by_text.get(str(a)))
        rb = position.get(b, by_text.get(str(b)))
        if ra is not None and rb is not None and ra != rb:
            out.append((ra, rb))
    return out


def keep_apart(
    ids: Sequence[Any], pairs: np.ndarray, score: np.ndarray, exclude: Iterable[tuple[Any, Any]]
) -> np.ndarray:
    """Which verified pairs to keep so that no excluded id pair ends in one cluster.

    Clusters are the connected components of the kept pairs. A component of all the pairs that holds
    no excluded id pair keeps every pair. Inside one that does, pairs are merged from the highest score
    down (union-find) and a pair that would join two parts holding an excluded pair is dropped, so the
    component splits where the evidence is weakest; a marked pair itself is always dropped. Excluded
    ids absent from ``ids`` are ignored (marks from another corpus).

    Args:
        ids: Document ids, row order.
        pairs: ``(m, 2)`` rows of the verified pairs.
        score: Score of each pair (higher = merged first).
        exclude: Id pairs to keep apart (e.g. `not_duplicate_pairs` of a marks file).

    Returns:
        A boolean mask over ``pairs``.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    keep = np.ones(len(pairs), dtype=bool)
    apart = _rows_of(ids, exclude)
    if not apart or not len(pairs):
        return keep
    n = len(ids)
    graph = coo_matrix((np.ones(len(pairs), np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    hit = {int(comp[a]) for a, b in apart if comp[a] == comp[b]}
    if not hit:
        return keep
    # forbidden partners of each root, as rows (resolved to roots when checked)
    partners: dict[int, set[int]] = {}
    for a, b in apart:
        if int(comp[a]) in hit:
            partners.setdefault(a, set()).add(b)
            partners.setdefault(b, set()).add(a)
    inside = np.flatnonzero(np.isin(comp[pairs[:, 0]], np.fromiter(hit, dtype=np.int64)))
    order = inside[np.lexsort((pairs[inside, 1], pairs[inside, 0], -np.asarray(score, np.float64)[inside]))]
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        root = x
        while parent.get(root, root) != root:
            root = parent[root]
        while parent.get(x, x) != root:
            parent[x], x = root, parent[x]
        return root

    for e in order.tolist():
        ra, rb = find(int(pairs[e, 0])), find(int(pairs[e, 1]))
        if ra == rb:
            continue
        pa, pb = partners.get(ra, set()), partners.get(rb, set())
        if any(find(x) == rb for x in pa) or any(find(x) == ra for x in pb):
            keep[e] = False
            continue
        parent[rb] = ra
        if pb:
            partners[ra] = pa | pb
            partners.pop(rb, None)
    return keep
