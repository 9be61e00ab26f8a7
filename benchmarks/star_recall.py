"""What linear bucket edges cost: the staged dedup (star, or star + path, per bucket) against all pairs.

For each case, the same corpus goes through the in-memory path (`dedup_corpus` / `find_duplicates`: MinHash
buckets give all their pairs; ``flat`` embedding candidates are every pair above the threshold) and the
staged pipeline (`dedup_pipeline`: each bucket gives star edges to its smallest member, and with
``star+path`` also the path through its members in row order). Reported:

* verified pairs of each;
* ``co-clustered``: same-cluster document pairs of the all-pairs result, and the share of them the staged
  result also puts together (the recall cost of star edges, 1.0 = no cost);
* pairwise precision / recall / F1 of both against the corpus's labels (``cluster`` column).

Cases: ``minhash`` (default threshold, word 2-grams: same band keys in both paths, so this isolates the star
edges), ``embedding-lsh`` (sign-random-projection bands + star edges, against the exact flat range search;
this adds the LSH miss rate, <= 0.01 per pair at the threshold by construction). Embedding cases encode with
the default model (slow on CPU for long corpora: the wiki_versions dev set is 2,504 documents of ~10K tokens).

    python benchmarks/star_recall.py                                   # the bundled sample, both cases
    python benchmarks/star_recall.py ../shared/data/dev/wiki_versions/corpus.parquet --cases minhash
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, write_json

ROOT = Path(__file__).resolve().parents[1]
CASES = ("minhash", "embedding-lsh")


def _co_clustered(a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
    """(pairs together in ``a``, of those also together in ``b``) for per-document cluster labels."""
    from reformer_retrieval.evaluate import dedup_metrics

    m = dedup_metrics(b, a)  # b predicted against a as truth: correct pairs = pairs together in both
    return m.true_pairs, m.correct_pairs


def run_case(corpus: Path, case: str, work: Path, edges: str = "star+path") -> dict[str, Any]:
    """One row: the all-pairs and the staged result (``edges`` per bucket) of ``case`` on ``corpus``."""
    from reformer_retrieval.dedup import dedup_corpus, find_duplicates
    from reformer_retrieval.evaluate import dedup_metrics
    from reformer_retrieval.pipeline import dedup_pipeline
    from reformer_retrieval.pipeline.sketch import to_matrix

    labels_table = pq.read_table(corpus, columns=["id", "cluster"])
    truth = dict(zip(labels_table.column("id").to_pylist(), labels_table.column("cluster").to_pylist()))
    t0 = time.perf_counter()
    if case == "minhash":
        star = dedup_pipeline(corpus, work / "star-minhash", method="minhash", work_dir=work / "stages", edges=edges)
        t_star = time.perf_counter() - t0
        t0 = time.perf_counter()
        full = dedup_corpus(corpus, work / "all-minhash", method="minhash", show_progress=False)
        t_full = time.perf_counter() - t0
    else:
        star = dedup_pipeline(corpus, work / "star-lsh", method="embedding", index="lsh", work_dir=work / "stages",
                              device="cpu", show_progress=True, edges=edges)
        t_star = time.perf_counter() - t0
        emb = pq.ParquetDataset(work / "stages" / "embed").read(columns=["row", "embedding"])
        order = np.argsort(emb.column("row").to_numpy())
        vectors = to_matrix(emb.column("embedding"), np.float32)[order]
        t0 = time.perf_counter()  # the same vectors, every pair above the threshold (exact range search)
        full = find_duplicates(star.ids, vectors=vectors, method="embedding", index="flat",
                               threshold=star.summary["thresholds"]["cosine"])
        t_full = time.perf_counter() - t0
    if full.ids != star.ids:
        raise RuntimeError("the two paths hold different documents")
    together, kept = _co_clustered(full.cluster_id, star.cluster_id)
    gold = [truth[i] for i in full.ids]
    m_full, m_star = dedup_metrics(full.cluster_id, gold), dedup_metrics(star.cluster_id, gold)
    return {
        "corpus": str(corpus), "case": case, "edges": edges, "documents": len(full.ids),
        "threshold": star.summary["thresholds"], "bands": star.summary.get("srp") or star.summary.get("minhash"),
        "verified_pairs_all": int(full.summary["verified_pairs"]), "verified_pairs_star": int(star.summary["verified_pairs"]),
        "co_clustered_all": together, "co_clustered_kept": kept,
        "star_recall_of_all_pairs": kept / together if together else 1.0,
        "largest_bucket": star.summary["largest_bucket"],
        "all": m_full.to_dict(), "star": m_star.to_dict(),
        "seconds_all": round(t_full, 2), "seconds_star": round(t_star, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("corpus", nargs="?", type=Path, default=ROOT / "examples" / "sample.parquet",
                        help="Parquet with id, text and cluster columns [the bundled sample]")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep the stages here (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    bad = [c for c in cases if c not in CASES]
    if bad:
        parser.error(f"unknown case {bad[0]!r}; choose from {', '.join(CASES)}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        for case in cases:
            for edges in ("star", "star+path"):  # the stages before candidates are shared
                rows.append(run_case(args.corpus, case, work / case, edges))
    table = [[r["case"], r["edges"], r["documents"], r["verified_pairs_all"], r["verified_pairs_star"],
              f"{r['co_clustered_kept']:,} / {r['co_clustered_all']:,} ({r['star_recall_of_all_pairs']:.4f})",
              f"{r['all']['precision']:.3f} / {r['all']['recall']:.3f} / {r['all']['f1']:.3f}",
              f"{r['star']['precision']:.3f} / {r['star']['recall']:.3f} / {r['star']['f1']:.3f}",
              r["largest_bucket"]] for r in rows]
    print(f"corpus: {args.corpus}")
    print(markdown_table(["case", "edges", "docs", "verified (all pairs)", "verified (staged)",
                          "co-clustered kept by staged", "P / R / F1 all pairs", "P / R / F1 staged", "largest bucket"],
                         table))
    if args.json:
        write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
