"""Word-level inline diff of two texts (standard-library `difflib`), with long equal runs folded.

Two levels keep it fast on long documents: the texts are first aligned by sentence-like units (a run
of words ending at ``.``, ``!``, ``?``, ``;``, ``:`` or a newline), which are nearly all distinct so
`difflib.SequenceMatcher` aligns them in about linear time; only the units that differ are then diffed
word by word. Words compare without their surrounding whitespace. A 200 KB pair with scattered edits
takes well under a second (README "Reviewing results" has the measurement).

The result is a list of operations, compact enough to embed in the report as JSON:

* ``["=", text]``: equal text (shown);
* ``["-", text]``: text of ``a`` (the representative) missing from ``b``;
* ``["+", text]``: text of ``b`` (the member) missing from ``a``;
* ``["~", n]``: ``n`` equal words folded away (the ``context`` words on each side stay shown).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from difflib import SequenceMatcher
from typing import Any

__all__ = ["DiffOp", "changed_words", "tokens", "truncate_ops", "word_diff"]

#: One diff operation: ``[tag, text]`` or ``["~", folded_word_count]``.
DiffOp = list[Any]

_TOKEN = re.compile(r"\S+\s*|\s+")
_UNIT_END = frozenset(".!?;:")
#: Units longer than this many words also end at content-defined points (see `_units`).
_UNIT_WORDS = 16
#: Word-level diffs of two changed blocks larger than this (product of lengths) use difflib's autojunk
#: heuristic; smaller ones are diffed exactly.
_EXACT_LIMIT = 250_000


def tokens(text: str) -> list[str]:
    """Words with their trailing whitespace (a leading whitespace run is a token of its own)."""
    return _TOKEN.findall(text)


def _units(toks: Sequence[str]) -> list[tuple[int, int]]:
    """``(start, stop)`` token ranges of sentence-like units.

    A unit ends at sentence punctuation or a newline; a unit past `_UNIT_WORDS` words also ends at a
    word whose hash is 0 modulo `_UNIT_WORDS` (content-defined, so both texts cut at the same words
    and text without punctuation still aligns unit by unit).
    """
    out, start = [], 0
    for i, tok in enumerate(toks):
        word = tok.rstrip()
        if (word[-1:] in _UNIT_END or "\n" in tok[len(word):]
                or (i - start >= _UNIT_WORDS and hash(word) % _UNIT_WORDS == 0)):
            out.append((start, i + 1))
            start = i + 1
    if start < len(toks):
        out.append((start, len(toks)))
    return out


def _word_ops(ka: Sequence[str], kb: Sequence[str], a0: int, b0: int) -> list[tuple[str, int, int, int, int]]:
    """Opcodes of a word-level diff of ``ka`` vs ``kb`` (keys), shifted by ``a0`` / ``b0``."""
    if not ka or not kb:
        return [("replace", a0, a0 + len(ka), b0, b0 + len(kb))] if ka or kb else []
    autojunk = len(ka) * len(kb) > _EXACT_LIMIT
    sm = SequenceMatcher(None, ka, kb, autojunk=autojunk)
    return [(tag, i1 + a0, i2 + a0, j1 + b0, j2 + b0) for tag, i1, i2, j1, j2 in sm.get_opcodes()]


def _opcodes(ta: Sequence[str], tb: Sequence[str]) -> list[tuple[str, int, int, int, int]]:
    """Word-level opcodes of token lists ``ta`` -> ``tb``: common ends cut, then aligned by units."""
    ka = [t.strip() for t in ta]
    kb = [t.strip() for t in tb]
    head = 0
    limit = min(len(ka), len(kb))
    while head < limit and ka[head] == kb[head]:
        head += 1
    tail = 0
    while tail < limit - head and ka[len(ka) - 1 - tail] == kb[len(kb) - 1 - tail]:
        tail += 1
    out = [("equal", 0, head, 0, head)] if head else []
    out.extend(_middle_opcodes(ta[head:len(ta) - tail], tb[head:len(tb) - tail],
                               ka[head:len(ka) - tail], kb[head:len(kb) - tail], head))
    if tail:
        out.append(("equal", len(ta) - tail, len(ta), len(tb) - tail, len(tb)))
    return out


def _middle_opcodes(ta: Sequence[str], tb: Sequence[str], ka: list[str], kb: list[str],
                    shift: int) -> list[tuple[str, int, int, int, int]]:
    """`_opcodes` of the part between the common ends (indices shifted by ``shift``)."""
    if len(ka) * len(kb) <= _EXACT_LIMIT:  # short: one word-level pass is cheaper
        return _word_ops(ka, kb, shift, shift)
    ua, ub = _units(ta), _units(tb)
    key_a = [" ".join(ka[s:e]) for s, e in ua]
    key_b = [" ".join(kb[s:e]) for s, e in ub]
    out: list[tuple[str, int, int, int, int]] = []
    for tag, i1, i2, j1, j2 in SequenceMatcher(None, key_a, key_b, autojunk=False).get_opcodes():
        a_lo = ua[i1][0] if i1 < i2 else (ua[i1][0] if i1 < len(ua) else len(ta))
        a_hi = ua[i2 - 1][1] if i1 < i2 else a_lo
        b_lo = ub[j1][0] if j1 < j2 else (ub[j1][0] if j1 < len(ub) else len(tb))
        b_hi = ub[j2 - 1][1] if j1 < j2 else b_lo
        if tag == "equal":
            out.append(("equal", a_lo + shift, a_hi + shift, b_lo + shift, b_hi + shift))
        else:
            out.extend(_word_ops(ka[a_lo:a_hi], kb[b_lo:b_hi], a_lo + shift, b_lo + shift))
    return out


def _fold(ops: list[DiffOp], context: int) -> list[DiffOp]:
    """Replace the middle of long equal runs by ``["~", n]`` (``context`` words kept on each side)."""
    out: list[DiffOp] = []
    for pos, (tag, toks) in enumerate(ops):
        if tag != "=":
            out.append([tag, "".join(toks)])
            continue
        head = context if pos > 0 or len(ops) == 1 else 0
        tail = context if pos < len(ops) - 1 else 0
        if len(toks) <= head + tail + context:
            out.append(["=", "".join(toks)])
            continue
        if head:
            out.append(["=", "".join(toks[:head])])
        out.append(["~", len(toks) - head - tail])
        if tail:
            out.append(["=", "".join(toks[len(toks) - tail:])])
    return out


def word_diff(a: str, b: str, context: int = 12) -> list[DiffOp]:
    """Inline word diff of ``a`` (the representative) -> ``b`` (a member), long equal runs folded.

    Args:
        a: The text compared against (its words missing from ``b`` are ``"-"``).
        b: The text shown (its words missing from ``a`` are ``"+"``; equal text is taken from ``b``).
        context: Equal words kept on each side of a change; longer equal runs are folded (an equal
            run at the start or the end keeps only the side next to a change; a text equal throughout
            keeps its first ``context`` words).

    Returns:
        The operations described in the module docstring, in reading order.
    """
    if a == b:
        return _fold([["=", tokens(b)]], context)
    ta, tb = tokens(a), tokens(b)
    merged: list[tuple[str, list[str]]] = []

    def emit(tag: str, toks: Sequence[str]) -> None:
        if not toks:
            return
        if merged and merged[-1][0] == tag:
            merged[-1][1].extend(toks)
        else:
            merged.append((tag, list(toks)))

    for tag, i1, i2, j1, j2 in _opcodes(ta, tb):
        if tag == "equal":
            emit("=", tb[j1:j2])
        else:
            emit("-", ta[i1:i2])
            emit("+", tb[j1:j2])
    return _fold([[tag, toks] for tag, toks in merged], context)


def changed_words(ops: Sequence[DiffOp]) -> int:
    """Words deleted plus words inserted in a `word_diff` result."""
    return sum(len(tokens(op[1].strip())) if op[1].strip() else 0 for op in ops if op[0] in "+-")


def truncate_ops(ops: Sequence[DiffOp], max_chars: int) -> list[DiffOp]:
    """The first operations of ``ops`` holding at most about ``max_chars`` characters of text.

    What is cut is summarised by one final ``["...", n]`` operation (``n`` = words not shown), so the
    page can say the diff goes on. Long diffs of unrelated documents would otherwise dominate the file.
    """
    out: list[DiffOp] = []
    used = 0
    for i, op in enumerate(ops):
        if op[0] == "~":
            out.append(list(op))
            continue
        if used + len(op[1]) > max_chars:
            room = max(0, max_chars - used)
            if room:
                out.append([op[0], op[1][:room]])
            rest = len(tokens(op[1][room:])) + sum(
                o[1] if o[0] == "~" else len(tokens(o[1])) for o in ops[i + 1:])
            out.append(["...", rest])
            return out
        used += len(op[1])
        out.append(list(op))
    return out
