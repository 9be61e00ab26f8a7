"""Lexical channel speed: `Encoder(channels="lexical")` (numpy, whole documents) vs the project's MinHash path.

Both read the same texts on the same CPU in one run, interleaved (``--repeats`` rounds, best of each), and the
table gives characters per second and our/anchor ratio. The lexical side includes tokenisation (NFKC,
lower-casing, whitespace) and the count sketch; the MinHash side is `reformer_retrieval.dedup.minhash_inputs`
(word shingles + 128-permutation signatures), what ``dedup --method minhash`` computes before banding.

Examples::

    python benchmarks/lexical_speed.py                        # the bundled sample
    python benchmarks/lexical_speed.py --data ../shared/data/dev/wiki_versions/corpus.parquet --json lex.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, write_json

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / "examples" / "sample.parquet"


def _timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Parquet file with a text column")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--model", type=Path, default=None, help="model directory (default: the bundled model)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the best of each is kept")
    parser.add_argument("--json", type=Path, default=None, help="write the rows here")
    args = parser.parse_args(argv)

    import pyarrow.parquet as pq

    from reformer_retrieval.dedup import minhash_inputs
    from reformer_retrieval.encode import Encoder

    texts = [str(t) for t in pq.read_table(args.data, columns=[args.text_column]).column(0).to_pylist()]
    chars = sum(len(t) for t in texts)
    encoder = Encoder.load(args.model, device="cpu", channels="lexical")
    best = {"lexical": float("inf"), "minhash": float("inf")}
    for _ in range(max(1, args.repeats)):
        best["lexical"] = min(best["lexical"], _timed(lambda: encoder.encode(texts, show_progress=False)))
        best["minhash"] = min(best["minhash"], _timed(lambda: minhash_inputs(texts)))
    rows = [
        {"method": f"lexical channel, numpy ({encoder.model_id})", "seconds": best["lexical"],
         "chars_per_s": chars / best["lexical"]},
        {"method": "MinHash path (word shingles, 128 perm)", "seconds": best["minhash"],
         "chars_per_s": chars / best["minhash"]},
    ]
    ratio = rows[0]["chars_per_s"] / rows[1]["chars_per_s"]
    print(f"{args.data}: {len(texts):,} documents, {chars:,} characters; best of {args.repeats} interleaved rounds")
    print(markdown_table(
        ["method", "seconds", "chars/s", "vs MinHash"],
        [[r["method"], f"{r['seconds']:.2f}", f"{r['chars_per_s']:,.0f}", f"{r['chars_per_s'] / rows[1]['chars_per_s']:.2f}x"]
         for r in rows],
        align="lrrr",
    ))
    if args.json is not None:
        write_json(args.json, {"data": str(args.data), "n_docs": len(texts), "chars": chars, "rows": rows,
                               "lexical_vs_minhash": ratio})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
