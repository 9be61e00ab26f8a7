"""Build ``examples/sample.parquet``: real documents plus seeded near-duplicate variants of some of them.

Documents are drawn from the project's long-document corpus (``../shared/data/corpus``, see its README):
a fixed quota per source, 2,000-20,000 characters each, permissively licensed sources only (share-alike
sources are left out so the sample carries no share-alike terms), selected with a seeded generator and
kept under a total token budget (UTF-8 bytes, the byte tokenizer's unit) so that encoding the whole sample
on a laptop CPU takes minutes, not hours.

About a fifth of the documents get one near-duplicate variant each, made by two of these edits (chosen per
variant by the same seeded generator):

- ``typos``: 1-3% of words get a keyboard-style typo (swap, drop, double or replace one letter);
- ``ocr``: OCR-like confusions on 2-5% of eligible spots (rn<->m, l->1, O->0, e->c, cl->d, fi->fl,
  hyphenated line breaks), as in scanned-and-recognised text;
- ``sentences``: 8-20% of sentences deleted and 1-4 sentences inserted from another sampled document;
- ``boilerplate``: a download/licence header and a footer added, as crawled copies have.

Columns: ``id``, ``text``, ``source``, ``license``, ``cluster`` (the id of the original document: an
original and its variant share it), ``variant`` (``original`` or the edits applied, e.g. ``typos+ocr``).
Rows are shuffled. The same arguments always give the same file.

Usage:
    python examples/make_sample.py --corpus ../shared/data/corpus --out examples/sample.parquet
"""

from __future__ import annotations

import argparse
import random
import re
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

# Documents per source (sources under share-alike licences - Debian handbook, Perseus - are left out).
QUOTAS: dict[str, int] = {
    "apache-httpd-docs": 14,
    "apache-httpd-docs-fr": 8,
    "apache-httpd-docs-de": 4,
    "apache-httpd-docs-es": 4,
    "apache-httpd-docs-ja": 5,
    "apache-httpd-docs-ko": 5,
    "apache-httpd-docs-tr": 5,
    "django-docs": 12,
    "elife": 12,
    "nodejs-docs": 5,
    "postgresql-docs": 16,
    "python-docs": 14,
    "rust-book": 9,
    "rust-nomicon": 5,
    "rust-reference": 7,
    "rustc-dev-guide": 9,
    "sotu": 7,
    "sqlite-docs": 10,
    "uscode": 9,
}
EXCLUDE_ID = re.compile(r"^django-docs/.*/releases/")  # neighbouring release notes are near-duplicates already

OCR_RULES = [("rn", "m"), ("m", "rn"), ("l", "1"), ("O", "0"), ("e", "c"), ("cl", "d"), ("fi", "fl"), ("I", "l")]
HEADERS = [
    "Downloaded from the project mirror on {date}. This copy is provided for reference only; "
    "see the original site for the current version.",
    "[Archived page - retrieved {date}]\nPrinted from the documentation portal. Some links may no longer work.",
    "Source: internal knowledge base export ({date}). Do not edit this copy; changes are lost on the next sync.",
]
FOOTERS = [
    "Page generated automatically. Report problems to the site administrator.",
    "-- end of document -- (c) the respective authors; redistributed under the original licence.",
    "Was this page helpful? Yes / No. Last updated {date}.",
]
_SENTENCE = re.compile(r"(?<=[.!?。])\s+")
_WORD = re.compile(r"[A-Za-zÀ-ÿ]{4,}")


def _typos(text: str, rng: random.Random) -> str:
    rate = rng.uniform(0.01, 0.03)
    letters = "abcdefghijklmnopqrstuvwxyz"

    def edit(m: re.Match[str]) -> str:
        w = m.group(0)
        if rng.random() >= rate:
            return w
        i = rng.randrange(1, len(w) - 1)
        kind = rng.randrange(4)
        if kind == 0:
            return w[:i] + w[i + 1] + w[i] + w[i + 2 :]
        if kind == 1:
            return w[:i] + w[i + 1 :]
        if kind == 2:
            return w[:i] + w[i] + w[i:]
        return w[:i] + rng.choice(letters) + w[i + 1 :]

    return _WORD.sub(edit, text)


def _ocr(text: str, rng: random.Random) -> str:
    rate = rng.uniform(0.02, 0.05)
    for src, dst in OCR_RULES:
        text = re.sub(re.escape(src), lambda m, d=dst: d if rng.random() < rate else m.group(0), text)

    def hyphenate(m: re.Match[str]) -> str:
        w = m.group(0)
        if len(w) < 8 or rng.random() >= rate:
            return w
        cut = rng.randrange(3, len(w) - 3)
        return w[:cut] + "-\n" + w[cut:]

    return _WORD.sub(hyphenate, text)


def _sentences(text: str, rng: random.Random, donor: str) -> str:
    parts = _SENTENCE.split(text)
    if len(parts) < 4:
        return text
    drop = rng.uniform(0.08, 0.20)
    kept = [s for s in parts if rng.random() >= drop] or parts[:1]
    donor_parts = [s for s in _SENTENCE.split(donor) if 20 <= len(s) <= 400]
    for _ in range(rng.randint(1, 4) if donor_parts else 0):
        kept.insert(rng.randrange(len(kept) + 1), rng.choice(donor_parts))
    return " ".join(kept)


def _boilerplate(text: str, rng: random.Random) -> str:
    date = f"{rng.randint(2015, 2024)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    return f"{rng.choice(HEADERS).format(date=date)}\n\n{text}\n\n{rng.choice(FOOTERS).format(date=date)}"


EDITS = ("typos", "ocr", "sentences", "boilerplate")


def make_variant(text: str, rng: random.Random, donor: str) -> tuple[str, str]:
    """A near-duplicate of ``text`` made by two seeded edits; returns (text, edit names)."""
    chosen = sorted(rng.sample(EDITS, 2), key=EDITS.index)
    for name in chosen:
        if name == "typos":
            text = _typos(text, rng)
        elif name == "ocr":
            text = _ocr(text, rng)
        elif name == "sentences":
            text = _sentences(text, rng, donor)
        else:
            text = _boilerplate(text, rng)
    return text, "+".join(chosen)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    here = Path(__file__).resolve().parent
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=here.parent / ".." / "shared" / "data" / "corpus")
    ap.add_argument("--out", type=Path, default=here / "sample.parquet")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-chars", type=int, default=2_000)
    ap.add_argument("--max-chars", type=int, default=20_000)
    ap.add_argument("--variant-share", type=float, default=0.2, help="share of originals that get a variant")
    ap.add_argument("--length-bias", type=float, default=1.5, help="draw weight = length ** -bias")
    ap.add_argument("--token-budget", type=int, default=800_000, help="max total UTF-8 bytes of the sample")
    args = ap.parse_args(argv)

    files = sorted(args.corpus.glob("*.parquet"))
    if not files:
        print(f"error: no *.parquet in {args.corpus}", file=sys.stderr)
        return 1
    table = pa.concat_tables(pq.read_table(f, columns=["id", "text", "source", "license", "n_chars"]) for f in files)
    rows = [
        r
        for r in table.to_pylist()
        if r["source"] in QUOTAS and args.min_chars <= r["n_chars"] <= args.max_chars and not EXCLUDE_ID.match(r["id"])
    ]
    rows.sort(key=lambda r: r["id"])
    rng = random.Random(args.seed)
    by_source: dict[str, list[dict]] = {}
    for r in rows:
        by_source.setdefault(r["source"], []).append(r)

    # Shorter documents are likelier to be drawn (weight length ** -length_bias) so the sample stays quick to encode.
    originals: list[dict] = []
    for source in sorted(QUOTAS):
        pool = list(by_source.get(source, []))
        for _ in range(min(QUOTAS[source], len(pool))):
            weights = [len(r["text"].encode("utf-8")) ** -args.length_bias for r in pool]
            originals.append(pool.pop(rng.choices(range(len(pool)), weights=weights)[0]))
    rng.shuffle(originals)
    # Every 1/share-th kept original gets a variant; both count against the token budget.
    budget_left = args.token_budget
    kept: list[tuple[dict, bool]] = []
    for r in originals:
        j = len(kept)
        with_variant = int((j + 1) * args.variant_share) > int(j * args.variant_share)
        cost = len(r["text"].encode("utf-8")) * (2 if with_variant else 1)
        if cost <= budget_left:
            kept.append((r, with_variant))
            budget_left -= cost
    out_rows = [{**r, "cluster": r["id"], "variant": "original"} for r, _ in kept]
    for i, (r, with_variant) in enumerate(kept):
        if not with_variant:
            continue
        donor = kept[(i + 1) % len(kept)][0]["text"]
        text, edits = make_variant(r["text"], rng, donor)
        out_rows.append(
            {
                "id": f"{r['id']}~variant",
                "text": text,
                "source": r["source"],
                "license": f"{r['license']}; modified: {edits} (examples/make_sample.py)",
                "cluster": r["id"],
                "variant": edits,
            }
        )
    rng.shuffle(out_rows)
    columns = ["id", "text", "source", "license", "cluster", "variant"]
    out = pa.table({c: pa.array([r[c] for r in out_rows], type=pa.string()) for c in columns})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    pq.write_table(out, tmp, compression="zstd", compression_level=9, row_group_size=64)
    tmp.replace(args.out)
    n_chars = sum(len(r["text"]) for r in out_rows)
    n_bytes = sum(len(r["text"].encode("utf-8")) for r in out_rows)
    print(
        f"wrote {args.out}: {len(out_rows)} documents ({len(kept)} originals from {len({r['source'] for r, _ in kept})} "
        f"sources, {len(out_rows) - len(kept)} variants), {n_chars:,} characters, {n_bytes:,} UTF-8 bytes"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
