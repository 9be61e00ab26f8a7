"""Review-page diff speed: `reformer_retrieval.report.diff.word_diff` on 200 KB pairs (the page's budget is a
200 KB pair in well under a second).

Cases: 200 scattered word edits, the same without sentence punctuation, and two unrelated 200 KB texts (the
worst case for a diff). Best of ``--repeats`` per case; prints a table, ``--json`` writes it.

    python benchmarks/diff_speed.py --json diff.json
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, write_json


def _text(rng: random.Random, sentences: int) -> str:
    vocab = ["".join(rng.choice("abcdefghijklmnop") for _ in range(rng.randint(2, 9))) for _ in range(3000)]
    common = ["the", "of", "and", "a", "to", "in"]
    return "".join(" ".join(rng.choice(common) if rng.random() < 0.3 else rng.choice(vocab)
                            for _ in range(rng.randint(8, 30))) + ". " for _ in range(sentences))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    from reformer_retrieval.report.diff import word_diff

    rng = random.Random(0)
    a = _text(rng, 2000)
    words = a.split(" ")
    for i in rng.sample(range(len(words)), 200):
        words[i] = "CHANGED"
    edited = " ".join(words)
    cases = {"200 word edits": edited, "200 edits, no punctuation": edited.replace(". ", " "),
             "unrelated text": _text(rng, 2000)}
    rows = []
    for name, other in cases.items():
        best = float("inf")
        for _ in range(max(1, args.repeats)):
            start = time.perf_counter()
            word_diff(a, other)
            best = min(best, time.perf_counter() - start)
        rows.append({"case": name, "bytes": len(a.encode()) + len(other.encode()), "seconds": best})
    print(markdown_table(["case", "bytes (both texts)", "seconds (best)"],
                         [[r["case"], f"{r['bytes']:,}", f"{r['seconds']:.3f}"] for r in rows], align="lrr"))
    if args.json is not None:
        write_json(args.json, {"rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
