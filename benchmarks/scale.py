"""Scale of the staged MinHash dedup: generated short documents with planted near-duplicates, local vs Ray engine.

For every size, one corpus is generated (``--seed``; 30-word documents over a 50K-word vocabulary, every tenth
document followed by 1-3 copies with ~5% of the words replaced) and deduplicated by `dedup_pipeline`
(``method="minhash"``, Jaccard 0.5, word 2-grams, 128 permutations) with each engine, each run in a fresh
child process. Reported: documents/s, seconds per stage, peak RSS of the driver process (for Ray, the
workers' memory is not included: they are separate processes), and the share of planted pairs found.

    python benchmarks/scale.py                         # 100K documents, local and ray
    python benchmarks/scale.py --sizes 100000,1000000 --engines local --json scale.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import child_main, markdown_table, peak_rss_mb, run_in_subprocess, write_json

ENGINES = ("local", "ray")


def make_corpus(path: Path, n: int, seed: int = 0, words: int = 30, vocab: int = 50_000) -> int:
    """Write ``n`` generated documents to ``path`` (id, text, group); returns the number of planted pairs."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, size=(n, words))
    group = np.arange(n)
    starts = np.flatnonzero(np.arange(n) % 10 == 0)
    planted = 0
    for s in starts.tolist():  # 1-3 edited copies after every tenth document
        copies = min(int(rng.integers(1, 4)), n - s - 1)
        for c in range(1, copies + 1):
            row = tokens[s].copy()
            edit = rng.random(words) < 0.05
            row[edit] = rng.integers(0, vocab, size=int(edit.sum()))
            tokens[s + c] = row
            group[s + c] = s
        planted += copies * (copies + 1) // 2
    lexicon = np.array([f"w{i}" for i in range(vocab)], dtype=object)
    texts = [" ".join(lexicon[r]) for r in tokens]
    table = pa.table({"id": [f"d{i:08d}" for i in range(n)], "text": texts, "group": group})
    pq.write_table(table, path, row_group_size=65_536)
    return planted


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    import pyarrow.parquet as pq

    from reformer_retrieval.evaluate import dedup_metrics
    from reformer_retrieval.pipeline import dedup_pipeline

    engine = None
    if spec["engine"] == "ray":
        import ray

        from reformer_retrieval.ray_engine import RayEngine

        ray.init(num_cpus=spec["cpus"], include_dashboard=False, log_to_driver=False)
        engine = RayEngine()
    t0 = time.perf_counter()
    res = dedup_pipeline(spec["corpus"], spec["out"], method="minhash", threshold=0.5, engine=engine)
    seconds = time.perf_counter() - t0
    group = pq.read_table(spec["corpus"], columns=["group"]).column("group").to_numpy()
    same = group[res.pair_a] == group[res.pair_b]
    # planted pairs found: pairs of the same planted group that end in one cluster
    found = dedup_metrics(res.cluster_id, group).correct_pairs
    return {**spec, "status": "ok", "seconds": round(seconds, 2), "docs_per_s": round(len(res.ids) / seconds, 1),
            "peak_rss_mb": round(peak_rss_mb(), 1), "stages": res.summary["seconds"],
            "clusters": res.summary["clusters"], "verified_pairs": res.summary["verified_pairs"],
            "false_pairs": int((~same).sum()), "planted_found": found}


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 2 and sys.argv[1] == "--child":
        return child_main(_child, sys.argv[2])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000", help="comma-separated corpus sizes [100000]")
    parser.add_argument("--engines", default=",".join(ENGINES), help="comma-separated: local, ray")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray instance [2]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per run")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep corpora and outputs here")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if any(e not in ENGINES for e in engines):
        parser.error(f"engines are {', '.join(ENGINES)}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for n in sizes:
            corpus = work / f"corpus-{n}.parquet"
            t0 = time.perf_counter()
            planted = make_corpus(corpus, n, args.seed)
            print(f"generated {n:,} documents ({planted:,} planted pairs) in {time.perf_counter() - t0:.1f} s",
                  file=sys.stderr)
            for engine in engines:
                spec = {"n": n, "engine": engine, "corpus": str(corpus), "out": str(work / f"out-{n}-{engine}"),
                        "cpus": args.cpus, "planted": planted}
                row = run_in_subprocess(Path(__file__), spec, args.timeout)
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
    table = [[r["n"], r["engine"], r.get("status"), r.get("seconds", ""), r.get("docs_per_s", ""),
              r.get("peak_rss_mb", ""), f"{r.get('planted_found', 0):,} / {r['planted']:,}", r.get("false_pairs", ""),
              ", ".join(f"{k} {v:.1f}" for k, v in (r.get("stages") or {}).items() if k != "total")] for r in rows]
    print(markdown_table(["docs", "engine", "status", "seconds", "docs/s", "driver peak RSS (MiB)",
                          "planted pairs together", "false pairs", "seconds per stage"], table))
    if args.json:
        write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
