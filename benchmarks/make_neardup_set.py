"""Make a labelled near-duplicate set from any corpus: windows of its documents, seeded variants, prefix traps.

The Wikipedia-revisions dev set is one kind of data. This builds a second labelled set (``id``, ``text``,
``cluster``, ``kind``) from a corpus of long documents, for `model_quality.py --data` and `dedup_quality.py`:

* **bases**: up to ``--windows`` disjoint windows of ``--chars`` characters from every document long enough
  (windows of one document are *different* documents of the same style and vocabulary: hard negatives);
* **variants**: ``--variants`` near-duplicates of each base, ``augment(base, strength, preset)`` with a
  seeded strength drawn from ``--strength LOW:HIGH`` (same cluster as the base);
* **prefix traps**: for a ``--trap-share`` of the bases, a document made of the base's first
  ``--trap-prefix`` share and a window of *another* document after it, in a cluster of its own. Reading only
  the start, it looks like a copy of the base; reading all of it, it is not.

Everything is seeded (``--seed``). The variants use the training augmentations, so the set is in the model's
training distribution for the kinds of change (not for the texts, when the corpus is held out)::

    python benchmarks/make_neardup_set.py ../shared/data/corpus/dev-00000.parquet -o synth.parquet
    python benchmarks/model_quality.py --data synth.parquet
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["main", "make_set"]


def make_set(
    texts: list[str],
    chars: int = 6000,
    windows: int = 3,
    variants: int = 2,
    strength: tuple[float, float] = (0.3, 0.9),
    preset: str = "near_duplicate",
    trap_share: float = 0.2,
    trap_prefix: float = 0.3,
    seed: int = 0,
) -> dict[str, list[Any]]:
    """Rows (``id``, ``text``, ``cluster``, ``kind``) of the labelled set built from ``texts`` (see module doc)."""
    from reformer_retrieval.train import augment

    rng = np.random.default_rng(seed)
    bases: list[tuple[int, str]] = []  # (source document, window text)
    for doc, text in enumerate(texts):
        n = min(windows, len(text) // chars)
        starts = sorted(rng.choice(len(text) // chars, size=n, replace=False).tolist()) if n else []
        bases.extend((doc, text[s * chars : (s + 1) * chars]) for s in starts)
    rows: dict[str, list[Any]] = {"id": [], "text": [], "cluster": [], "kind": []}

    def add(row_id: str, text: str, cluster: str, kind: str) -> None:
        rows["id"].append(row_id)
        rows["text"].append(text)
        rows["cluster"].append(cluster)
        rows["kind"].append(kind)

    for b, (doc, base) in enumerate(bases):
        cluster = f"c{b:05d}"
        add(f"{cluster}-base", base, cluster, "base")
        for v in range(variants):
            level = float(rng.uniform(*strength))
            add(f"{cluster}-v{v}", augment(base, level, seed=(seed, b, v), preset=preset), cluster, "variant")
        others = [i for i, (d, _) in enumerate(bases) if d != doc]
        if others and rng.random() < trap_share:
            other = bases[int(rng.choice(others))][1]
            cut = int(len(base) * trap_prefix)
            add(f"{cluster}-trap", base[:cut] + other[cut:], f"{cluster}-trap", "prefix_trap")
    return rows


def main(argv: list[str] | None = None) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from reformer_retrieval.atomic import atomic_path

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("corpus", type=Path, help="Parquet file with a text column")
    p.add_argument("-o", "--output", type=Path, required=True, help="labelled Parquet to write")
    p.add_argument("--text-column", default="text")
    p.add_argument("--chars", type=int, default=6000, help="characters per base window")
    p.add_argument("--windows", type=int, default=3, help="disjoint windows per document at most")
    p.add_argument("--variants", type=int, default=2, help="near-duplicates per base")
    p.add_argument("--strength", default="0.3:0.9", help="LOW:HIGH of the variants' augmentation strength")
    p.add_argument("--preset", default="near_duplicate", help="augmentation preset of the variants")
    p.add_argument("--trap-share", type=float, default=0.2, help="share of bases that get a prefix trap")
    p.add_argument("--trap-prefix", type=float, default=0.3, help="share of the base a trap starts with")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    low, high = (float(x) for x in args.strength.split(":"))
    if not args.corpus.is_file():
        print(f"no Parquet file at {args.corpus}", file=sys.stderr)
        return 2
    columns = pq.read_schema(args.corpus).names
    if args.text_column not in columns:
        print(f"{args.corpus} has no column {args.text_column!r} (columns: {', '.join(columns)})", file=sys.stderr)
        return 2
    texts = [t for t in pq.read_table(args.corpus, columns=[args.text_column]).column(0).to_pylist() if t]
    rows = make_set(texts, args.chars, args.windows, args.variants, (low, high), args.preset, args.trap_share,
                    args.trap_prefix, args.seed)
    if not rows["id"]:
        print(f"no document of {args.corpus} has {args.chars} characters", file=sys.stderr)
        return 2
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.output, ".parquet") as tmp:
        pq.write_table(pa.table(rows), tmp)
    kinds = {k: rows["kind"].count(k) for k in ("base", "variant", "prefix_trap")}
    print(f"wrote {len(rows['id'])} documents ({kinds}) in {len(set(rows['cluster']))} clusters to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
