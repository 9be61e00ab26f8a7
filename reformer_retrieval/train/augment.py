"""Seeded, composable near-duplicate transformations of text.

Every operation has the signature ``op(text, rng, strength, foreign=None) -> str``:

* ``rng`` is a ``numpy.random.Generator`` (the only source of randomness; no global state is read or written),
  so the same generator state always gives the same output;
* ``strength`` in ``[0, 1]`` scales how much the text changes; ``strength == 0`` returns the text unchanged;
* ``foreign`` is an optional list of unrelated texts, the source of inserted foreign spans.

Rates at ``strength = 1`` (they scale linearly with the strength):

=================  ===================================================================================
``ocr``            35% of OCR-confusable character groups replaced (rn->m, m->rn, l->1, O->0, e->c, cl->d,
                   vv->w, li->h, S->5, fi->ﬁ, ...)
``typos``          6% of characters hit by an insertion, deletion, substitution or transposition
``broken_words``   8% of words broken (space, hyphen + line break), 8% of spaces removed (joined words),
                   8% of spaces/line breaks swapped for one another (re-wrapped lines)
``word_edits``     12% of words dropped, duplicated or replaced by another word, swapped with a neighbour
``spans``          one deleted span (20-400 characters) and one inserted foreign span (20-400 characters)
                   per 1,500 characters
``shuffle``        25% of adjacent sentence pairs and 30% of adjacent paragraph pairs swapped
``boilerplate``    a header and a footer; running heads with page numbers every ~1,500-3,000 characters
``format``         whitespace (double spaces, tabs, blank lines), case (10% of words, and the whole text
                   lower/upper-cased with probability 0.3) and punctuation (10% dropped or changed, quote
                   and dash styles changed) noise
``crop``           a contiguous window keeping 100% down to 40% of the text (a partial copy / containment)
=================  ===================================================================================

Presets combine them (`PRESETS`): ``"ocr"`` (OCR-like noise only: ocr, typos, broken_words, format,
boilerplate, at fixed rates: strength 0.5 changes about 3% of the characters of English prose, 1.0 about 6%)
and ``"near_duplicate"`` (all of them, each applied with a probability and a random strength; the training
default).

Example:
    >>> from reformer_retrieval.train.augment import augment
    >>> noisy = augment("The modern library was closed.", strength=0.5, seed=7, preset="ocr")
    >>> noisy == augment("The modern library was closed.", strength=0.5, seed=7, preset="ocr")
    True
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "OPS",
    "PRESETS",
    "AugmentPolicy",
    "augment",
    "boilerplate",
    "broken_words",
    "crop",
    "format_noise",
    "make_rng",
    "ocr_confusions",
    "shuffle_units",
    "span_edits",
    "typos",
    "word_edits",
]

Op = Callable[..., str]

# ------------------------------------------------------------------------------------------------ helpers
_WORD = re.compile(r"\S+")
_TOKENS = re.compile(r"\S+|\s+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")
_PARAGRAPH = re.compile(r"\n\s*\n")
_PUNCT = re.compile(r"[.,;:!?\"'()\[\]\-]")
_LETTERS = "etaoinshrdlcumwfgypbvkjxqz"


def make_rng(seed: int | Sequence[int] | np.random.Generator | None) -> np.random.Generator:
    """A ``numpy.random.Generator`` from a seed (int or sequence of ints) or an existing generator."""
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None:
        raise ValueError("augment needs a seed (an int, a sequence of ints or a numpy Generator)")
    return np.random.default_rng(seed)


def _check_strength(strength: float) -> float:
    s = float(strength)
    if not 0.0 <= s <= 1.0:
        raise ValueError(f"augmentation strength must lie in [0, 1], got {strength!r}")
    return s


def _pick(rng: np.random.Generator, n: int, rate: float) -> np.ndarray:
    """Sorted indices of a Bernoulli(rate) subset of ``range(n)`` (drawn in O(k))."""
    if n <= 0 or rate <= 0.0:
        return np.zeros(0, dtype=np.int64)
    k = int(rng.binomial(n, min(rate, 1.0)))
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    return np.sort(rng.choice(n, size=k, replace=False))


def _random_letter(rng: np.random.Generator, text: str) -> str:
    """A character drawn from ``text`` itself (keeps the script), or a Latin letter for empty text."""
    if text:
        c = text[int(rng.integers(len(text)))]
        if not c.isspace():
            return c
    return _LETTERS[int(rng.integers(len(_LETTERS)))]


# ------------------------------------------------------------------------------------------------ operations
_OCR_TABLE: dict[str, tuple[str, ...]] = {
    "rn": ("m",),
    "m": ("rn", "nn"),
    "cl": ("d",),
    "d": ("cl",),
    "vv": ("w",),
    "w": ("vv",),
    "li": ("h",),
    "h": ("li", "b"),
    "l": ("1", "I", "|"),
    "1": ("l", "I"),
    "I": ("l", "1"),
    "O": ("0", "Q"),
    "0": ("O", "o"),
    "o": ("0", "a"),
    "e": ("c", "o"),
    "c": ("e",),
    "a": ("o", "e"),
    "u": ("n", "ii"),
    "n": ("u", "ri"),
    "S": ("5", "$"),
    "5": ("S",),
    "B": ("8", "3"),
    "8": ("B",),
    "fi": ("ﬁ",),
    "fl": ("ﬂ",),
    "t": ("f", "l"),
    "f": ("t",),
    "i": ("í", "l"),
    ",": (".",),
    ".": (",",),
}
_OCR_PATTERN = re.compile("|".join(re.escape(k) for k in sorted(_OCR_TABLE, key=len, reverse=True)))


def ocr_confusions(text: str, rng: np.random.Generator, strength: float, foreign: Sequence[str] | None = None) -> str:
    """Replace OCR-confusable character groups (rn/m, l/1, O/0, e/c, cl/d, ...) at rate ``0.35 * strength``."""
    rate = 0.35 * _check_strength(strength)
    if rate == 0.0 or not text:
        return text
    matches = list(_OCR_PATTERN.finditer(text))
    chosen = _pick(rng, len(matches), rate)
    if len(chosen) == 0:
        return text
    picks = rng.random(len(chosen))
    out: list[str] = []
    prev = 0
    for j, i in enumerate(chosen):
        m = matches[int(i)]
        options = _OCR_TABLE[m.group()]
        out.append(text[prev : m.start()])
        out.append(options[int(picks[j] * len(options))])
        prev = m.end()
    out.append(text[prev:])
    return "".join(out)


def typos(text: str, rng: np.random.Generator, strength: float, foreign: Sequence[str] | None = None) -> str:
    """Insert, delete, substitute or transpose characters at rate ``0.06 * strength`` per character."""
    rate = 0.06 * _check_strength(strength)
    positions = _pick(rng, len(text), rate)
    if len(positions) == 0:
        return text
    kinds = rng.integers(0, 4, size=len(positions))
    out: list[str] = []
    prev = 0
    for p, kind in zip(positions.tolist(), kinds.tolist()):
        if p < prev:  # the previous edit (a transposition) consumed this character
            continue
        out.append(text[prev:p])
        c = text[p]
        if kind == 0:  # insertion before the character
            out.append(_random_letter(rng, text) + c)
            prev = p + 1
        elif kind == 1:  # deletion
            prev = p + 1
        elif kind == 2:  # substitution
            out.append(_random_letter(rng, text))
            prev = p + 1
        else:  # transposition with the next character
            if p + 1 < len(text):
                out.append(text[p + 1] + c)
                prev = p + 2
            else:
                out.append(c)
                prev = p + 1
    out.append(text[prev:])
    return "".join(out)


def broken_words(text: str, rng: np.random.Generator, strength: float, foreign: Sequence[str] | None = None) -> str:
    """Break words (space or hyphen + line break), join words, and re-wrap lines, each at ``0.08 * strength``."""
    rate = 0.08 * _check_strength(strength)
    if rate == 0.0 or not text:
        return text
    parts = _TOKENS.findall(text)
    n = len(parts)
    breaks = set(_pick(rng, n, rate).tolist())
    joins = set(_pick(rng, n, rate).tolist())
    wraps = set(_pick(rng, n, rate).tolist())
    out: list[str] = []
    for i, part in enumerate(parts):
        if part[0].isspace():
            if i in joins and "\n\n" not in part:
                continue  # the two neighbouring words run together
            if i in wraps:
                part = " " if "\n" in part and "\n\n" not in part else ("\n" if "\n" not in part else part)
            out.append(part)
        else:
            if i in breaks and len(part) >= 4:
                cut = int(rng.integers(1, len(part) - 1))
                sep = " " if rng.random() < 0.5 else "-\n"
                part = part[:cut] + sep + part[cut:]
            out.append(part)
    return "".join(out)


def word_edits(text: str, rng: np.random.Generator, strength: float, foreign: Sequence[str] | None = None) -> str:
    """Drop, duplicate, replace (by another word of the text) or swap words, at ``0.12 * strength`` per word."""
    rate = 0.12 * _check_strength(strength)
    if rate == 0.0 or not text:
        return text
    parts = _TOKENS.findall(text)
    word_at = [i for i, p in enumerate(parts) if not p[0].isspace()]
    chosen = _pick(rng, len(word_at), rate)
    if len(chosen) == 0:
        return text
    kinds = rng.integers(0, 4, size=len(chosen))
    others = rng.integers(0, len(word_at), size=len(chosen))
    for j, w in enumerate(chosen.tolist()):
        i = word_at[w]
        kind = int(kinds[j])
        if kind == 0:
            parts[i] = ""
        elif kind == 1:
            parts[i] = parts[i] + " " + parts[i]
        elif kind == 2:
            parts[i] = parts[word_at[int(others[j])]]
        elif w + 1 < len(word_at):
            k = word_at[w + 1]
            parts[i], parts[k] = parts[k], parts[i]
    return "".join(parts)


def _foreign_span(rng: np.random.Generator, length: int, text: str, foreign: Sequence[str] | None) -> str:
    pool = [f for f in (foreign or ()) if f]
    source = pool[int(rng.integers(len(pool)))] if pool else text
    if len(source) <= length:
        return source
    start = int(rng.integers(0, len(source) - length))
    return source[start : start + length]


def span_edits(text: str, rng: np.random.Generator, strength: float, foreign: Sequence[str] | None = None) -> str:
    """Delete spans and insert spans of foreign text (from ``foreign``, else from elsewhere in the text).

    About ``strength`` deletions and ``strength`` insertions of 20-400 characters per 1,500 characters.
    """
    s = _check_strength(strength)
    if s == 0.0 or not text:
        return text
    n = len(text)
    n_del = int(rng.poisson(s * max(n, 300) / 1500))
    n_ins = int(rng.poisson(s * max(n, 300) / 1500))
    if n_del + n_ins == 0:
        return text
    edits: list[tuple[int, int, str]] = []  # (start, end, replacement)
    for _ in range(n_del):
        length = int(rng.integers(20, 401))
        start = int(rng.integers(0, max(1, n - length)))
        edits.append((start, min(n, start + length), ""))
    for _ in range(n_ins):
        at = int(rng.integers(0, n + 1))
        span = _foreign_span(rng, int(rng.integers(20, 401)), text, foreign)
        edits.append((at, at, " " + span + " "))
    edits.sort(key=lambda e: (e[0], e[1]))
    out: list[str] = []
    prev = 0
    for start, end, rep in edits:
        start = max(start, prev)
        end = max(end, start)
        out.append(text[prev:start])
        out.append(rep)
        prev = end
    out.append(text[prev:])
    return "".join(out)


def _swap_adjacent(units: list[str], rng: np.random.Generator, rate: float) -> list[str]:
    chosen = _pick(rng, max(0, len(units) - 1), rate)
    last = -2
    for i in chosen.tolist():
        if i == last + 1:
            continue  # do not move one unit twice
        units[i], units[i + 1] = units[i + 1], units[i]
        last = i
    return units


def shuffle_units(text: str, rng: np.random.Generator, strength: float, foreign: Sequence[str] | None = None) -> str:
    """Swap adjacent paragraphs (rate ``0.3 * strength``) and adjacent sentences (``0.25 * strength``)."""
    s = _check_strength(strength)
    if s == 0.0 or not text:
        return text
    paragraphs = _PARAGRAPH.split(text)
    paragraphs = _swap_adjacent(paragraphs, rng, 0.3 * s)
    shuffled = []
    for para in paragraphs:
        sentences = _SENTENCE_END.split(para)
        shuffled.append(" ".join(_swap_adjacent(sentences, rng, 0.25 * s)) if len(sentences) > 1 else para)
    return "\n\n".join(shuffled)


_HEADERS = (
    "Page {n} of {m}",
    "CONFIDENTIAL - DO NOT DISTRIBUTE",
    "Downloaded from https://archive.example.org/doc/{m}{n} on {d}/{mo}/20{y:02d}",
    "Copyright (c) 20{y:02d} All rights reserved.",
    "Printed on {d}.{mo}.19{y:02d}",
    "- {n} -",
    "Draft version {n}.{d}",
    "Scanned by the Digital Library Project",
)


def _boiler_line(rng: np.random.Generator) -> str:
    template = _HEADERS[int(rng.integers(len(_HEADERS)))]
    return template.format(
        n=int(rng.integers(1, 500)), m=int(rng.integers(1, 900)), d=int(rng.integers(1, 29)),
        mo=int(rng.integers(1, 13)), y=int(rng.integers(0, 99)),
    )


def boilerplate(text: str, rng: np.random.Generator, strength: float, foreign: Sequence[str] | None = None) -> str:
    """Add a header and a footer, and running heads with page numbers inside long texts.

    The header and footer are each added with probability ``strength``; running heads appear about every
    1,500-3,000 characters (at a line break) with probability ``strength`` per page.
    """
    s = _check_strength(strength)
    if s == 0.0:
        return text
    head = _boiler_line(rng) + "\n\n" if rng.random() < s else ""
    foot = "\n\n" + _boiler_line(rng) if rng.random() < s else ""
    body = text
    if len(text) > 3000:
        title = " ".join(_WORD.findall(text[:200])[:4]).upper()
        out: list[str] = []
        prev = 0
        page = int(rng.integers(1, 300))
        pos = int(rng.integers(1500, 3001))
        while pos < len(text):
            nl = text.find("\n", pos)
            cut = nl if nl != -1 and nl - pos < 500 else text.find(" ", pos)
            if cut == -1:
                break
            if rng.random() < s:
                out.append(text[prev:cut])
                out.append(f"\n{page} {title}\n" if rng.random() < 0.5 else f"\n{title} {page}\n")
                prev = cut
            page += 1
            pos = cut + int(rng.integers(1500, 3001))
        out.append(text[prev:])
        body = "".join(out)
    return head + body + foot


_PUNCT_SWAPS = {
    '"': ("'", "“", "”", ""),
    "'": ('"', "’", ""),
    "-": ("—", "–", " - ", ""),
    ",": ("", ".", ";"),
    ".": ("", ",", " ."),
    ";": (",", ":"),
    ":": (";", ""),
    "!": (".", ""),
    "?": ("", "."),
    "(": ("[", ""),
    ")": ("]", ""),
    "[": ("(",),
    "]": (")",),
}


def format_noise(text: str, rng: np.random.Generator, strength: float, foreign: Sequence[str] | None = None) -> str:
    """Whitespace, case and punctuation changes.

    Whitespace: 10% of gaps widened (double space, tab, blank line) and 10% of line breaks turned into spaces;
    case: 10% of words upper/lower/title-cased and, with probability 0.3, the whole text lower- or upper-cased;
    punctuation: 10% of marks dropped or changed. All rates are multiplied by ``strength``.
    """
    s = _check_strength(strength)
    if s == 0.0 or not text:
        return text
    parts = _TOKENS.findall(text)
    n = len(parts)
    widen = set(_pick(rng, n, 0.1 * s).tolist())
    flatten = set(_pick(rng, n, 0.1 * s).tolist())
    recase = set(_pick(rng, n, 0.1 * s).tolist())
    for i in range(n):
        part = parts[i]
        if part[0].isspace():
            if i in flatten and "\n" in part:
                part = " "
            if i in widen:
                part = part + ("  ", "\t", "\n\n")[int(rng.integers(3))]
        elif i in recase:
            part = (part.upper, part.lower, part.title)[int(rng.integers(3))]()
        parts[i] = part
    out = "".join(parts)
    marks = list(_PUNCT.finditer(out))
    chosen = _pick(rng, len(marks), 0.1 * s)
    if len(chosen):
        pieces: list[str] = []
        prev = 0
        for i in chosen.tolist():
            m = marks[i]
            options = _PUNCT_SWAPS.get(m.group(), ("",))
            pieces.append(out[prev : m.start()])
            pieces.append(options[int(rng.integers(len(options)))])
            prev = m.end()
        pieces.append(out[prev:])
        out = "".join(pieces)
    if rng.random() < 0.3 * s:
        out = out.lower() if rng.random() < 0.7 else out.upper()
    return out


def crop(text: str, rng: np.random.Generator, strength: float, foreign: Sequence[str] | None = None) -> str:
    """Keep one contiguous window of the text (a partial copy), ``1 - 0.6 * strength * u`` of it, u ~ U(0, 1)."""
    s = _check_strength(strength)
    if s == 0.0 or not text:
        return text
    keep = 1.0 - 0.6 * s * float(rng.random())
    length = max(1, round(len(text) * keep))
    if length >= len(text):
        return text
    start = int(rng.integers(0, len(text) - length + 1))
    return text[start : start + length]


OPS: dict[str, Op] = {
    "crop": crop,
    "shuffle": shuffle_units,
    "spans": span_edits,
    "boilerplate": boilerplate,
    "word_edits": word_edits,
    "broken_words": broken_words,
    "typos": typos,
    "ocr": ocr_confusions,
    "format": format_noise,
}
"""Every operation by name, in the order a policy applies them (structure first, characters last)."""


# ------------------------------------------------------------------------------------------------ policies
@dataclass(frozen=True)
class AugmentPolicy:
    """A composition of operations, each applied with a probability and a maximum strength.

    Attributes:
        ops: ``{name: (probability, max_strength)}`` for names in `OPS`; operations run in `OPS` order.
        random_strength: Draw each applied operation's strength uniformly in ``[0, max_strength * s]``
            (training: views of every difficulty); if False, use exactly ``max_strength * s`` (a fixed,
            documented noise level, e.g. for benchmarks). ``s`` is the ``strength`` given to `apply`.
    """

    ops: dict[str, tuple[float, float]] = field(default_factory=dict)
    random_strength: bool = True

    def __post_init__(self) -> None:
        for name, (prob, max_s) in self.ops.items():
            if name not in OPS:
                raise ValueError(f"AugmentPolicy: unknown operation {name!r} (known: {sorted(OPS)})")
            if not 0.0 <= prob <= 1.0 or not 0.0 <= max_s <= 1.0:
                raise ValueError(f"AugmentPolicy: {name} needs probability and strength in [0, 1]")

    def apply(
        self, text: str, rng: np.random.Generator, strength: float = 1.0, foreign: Sequence[str] | None = None
    ) -> str:
        """Transform ``text`` with the policy scaled by ``strength`` (0 = identity)."""
        s = _check_strength(strength)
        if s == 0.0:
            return text
        for name, op in OPS.items():
            if name not in self.ops:
                continue
            prob, max_s = self.ops[name]
            if prob <= 0.0 or max_s <= 0.0 or rng.random() >= prob:
                continue
            op_s = max_s * s * (float(rng.random()) if self.random_strength else 1.0)
            text = op(text, rng, op_s, foreign)
        return text

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {"ops": {k: list(v) for k, v in self.ops.items()}, "random_strength": self.random_strength}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> AugmentPolicy:
        """Inverse of `to_dict`."""
        ops = data.get("ops", {})
        if not isinstance(ops, dict):
            raise ValueError("AugmentPolicy: 'ops' must be a mapping of name -> [probability, max_strength]")
        return cls(
            ops={str(k): (float(v[0]), float(v[1])) for k, v in ops.items()},
            random_strength=bool(data.get("random_strength", True)),
        )


PRESETS: dict[str, AugmentPolicy] = {
    # OCR-like noise at a fixed level: every operation applied, each at exactly max_strength * strength.
    # On English prose, strength 0.5 changes about 3% of the characters (word-3-gram Jaccard between a
    # text and its copy about 0.45) and strength 1.0 about 6% (Jaccard about 0.25).
    "ocr": AugmentPolicy(
        ops={
            "boilerplate": (1.0, 0.1),
            "broken_words": (1.0, 0.12),
            "typos": (1.0, 0.1),
            "ocr": (1.0, 0.2),
            "format": (1.0, 0.08),
        },
        random_strength=False,
    ),
    # Training / near-duplicate views: every kind of change, each present with a probability.
    "near_duplicate": AugmentPolicy(
        ops={
            "crop": (0.3, 1.0),
            "shuffle": (0.3, 1.0),
            "spans": (0.5, 1.0),
            "boilerplate": (0.3, 1.0),
            "word_edits": (0.6, 1.0),
            "broken_words": (0.5, 1.0),
            "typos": (0.7, 1.0),
            "ocr": (0.5, 1.0),
            "format": (0.6, 1.0),
        },
        random_strength=True,
    ),
}
"""Named policies: ``"ocr"`` (fixed-level OCR noise) and ``"near_duplicate"`` (the training default)."""


def augment(
    text: str,
    strength: float = 0.5,
    seed: int | Sequence[int] | np.random.Generator = 0,
    preset: str | AugmentPolicy = "near_duplicate",
    foreign: Sequence[str] | None = None,
) -> str:
    """A near-duplicate of ``text``: the same seed, strength and preset always give the same output.

    Args:
        text: The text to change.
        strength: Overall strength in ``[0, 1]``; 0 returns ``text`` unchanged.
        seed: An int, a sequence of ints (e.g. ``(seed, doc_index)``) or a ``numpy.random.Generator``.
        preset: A name in `PRESETS` or an `AugmentPolicy`.
        foreign: Unrelated texts to draw inserted spans from (default: other parts of ``text``).
    """
    if not isinstance(text, str):
        raise TypeError(f"augment expects a str, got {type(text).__name__}")
    policy = preset if isinstance(preset, AugmentPolicy) else PRESETS.get(preset)
    if policy is None:
        raise ValueError(f"unknown augmentation preset {preset!r} (known: {sorted(PRESETS)})")
    return policy.apply(text, make_rng(seed), strength, foreign)
