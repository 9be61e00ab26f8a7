"""Index speed: build time, queries/s and recall@10 against exact search, and full dedup time.

Random unit vectors (seeded, width = the default model's embedding_dim unless --dim; --data lowrank:
embedding-like vectors of rank 32 plus noise), queries drawn the same way (held out), exact ground
truth from the flat index. For each approximate index
(HNSW, IVF-PQ, binary LSH) and each search setting: build seconds, queries/s, the speed-up over
exact search, recall@10. "near" queries (a stored vector plus noise, cosine ~0.9 to it, as in
near-duplicate search) are reported too with --near, with the fraction whose source vector is
among the hits ("source found"). Then, at the largest size, a full dedup
(index build + k-NN search + exact verification + union-find) over the vectors with planted
near-duplicate groups.

    python benchmarks/index_speed.py                        # 100K vectors (< 10 min on 2 cores)
    python benchmarks/index_speed.py --sizes 100000,1000000 # adds 1M (long: HNSW build dominates)
    python benchmarks/index_speed.py --data lowrank --kinds hnsw --no-dedup   # embedding-like vectors
    python benchmarks/index_speed.py --sizes 20000 --queries 200 --json rows.json   # smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fmt_ratio, markdown_table, write_json


def default_dim() -> int:
    """embedding_dim of the bundled default model."""
    cfg = Path(__file__).resolve().parents[1] / "reformer_retrieval" / "assets" / "default" / "config.json"
    return int(json.loads(cfg.read_text())["embedding_dim"])


def unit(rng: np.random.Generator, n: int, dim: int, chunk: int = 100_000) -> np.ndarray:
    out = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, chunk):
        x = rng.standard_normal((min(chunk, n - s), dim), dtype=np.float32)
        out[s:s + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def lowrank(rng: np.random.Generator, n: int, dim: int, rank: int = 32, noise: float = 0.5,
            chunk: int = 100_000, basis: np.ndarray | None = None) -> np.ndarray:
    """Embedding-like unit vectors: a random ``rank``-dim Gaussian mapped into ``dim`` dims, plus noise."""
    out = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        x = rng.standard_normal((m, rank), dtype=np.float32) @ basis + noise * rng.standard_normal((m, dim),
                                                                                                   dtype=np.float32)
        out[s:s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def near(rng: np.random.Generator, base: np.ndarray, cosine: float) -> np.ndarray:
    """Vectors at about ``cosine`` to the rows of ``base``."""
    noise = rng.standard_normal(base.shape, dtype=np.float32)
    noise -= (noise * base).sum(1, keepdims=True) * base
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    out = cosine * base + np.sqrt(1 - cosine**2) * noise
    return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


def timed_search(index: Any, q: np.ndarray, k: int, min_seconds: float = 1.0) -> tuple[np.ndarray, float]:
    """Rows of the top-k and queries/s (repeated until ``min_seconds`` of search)."""
    t0 = time.perf_counter()
    rows = index.search(q, k).rows
    elapsed, reps = time.perf_counter() - t0, 1
    while elapsed < min_seconds and reps < 20:
        t0 = time.perf_counter()
        index.search(q, k)
        elapsed += time.perf_counter() - t0
        reps += 1
    return rows, len(q) * reps / elapsed


def recall(truth: np.ndarray, got: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(t.tolist()) & set(g[:k].tolist())) / k for t, g in zip(truth, got)]))


def _found(got: np.ndarray, sources: np.ndarray | None) -> float | None:
    """Fraction of near-duplicate queries whose source vector is among the hits."""
    if sources is None:
        return None
    return float(np.mean([src in row for src, row in zip(sources.tolist(), got.tolist())]))


def bench_size(n: int, dim: int, args: argparse.Namespace, rng: np.random.Generator) -> list[dict[str, Any]]:
    from reformer_retrieval.indexes import build_index

    print(f"\n# n = {n:,}, dim = {dim}, data = {args.data}", file=sys.stderr)
    if args.data == "lowrank":
        basis = (rng.standard_normal((32, dim)) / np.sqrt(32)).astype(np.float32)
        x = lowrank(rng, n, dim, basis=basis)
        fresh = lowrank(rng, args.queries, dim, basis=basis)
    else:
        x = unit(rng, n, dim)
        fresh = unit(rng, args.queries, dim)
    ids = list(range(n))
    queries = {"random": fresh}
    sources = None
    if args.near:
        sources = rng.choice(n, args.queries, replace=False)
        queries["near"] = near(rng, x[sources], 0.9)
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    flat = build_index("flat", x, ids)
    flat_build = time.perf_counter() - t0
    truth, exact_qps = {}, {}
    for name, q in queries.items():
        truth[name], exact_qps[name] = timed_search(flat, q, args.k)
        rows.append({"n": n, "dim": dim, "kind": "flat (exact)", "setting": "-", "queries": name,
                     "build_s": flat_build, "qps": exact_qps[name], "speedup": 1.0, "recall@10": 1.0,
                     "source_found": _found(truth[name], sources) if name == "near" else None})
        print(f"flat {name}: {exact_qps[name]:,.0f} q/s", file=sys.stderr)
    del flat
    configs: list[tuple[str, dict[str, Any], str, list[Any]]] = []
    if "hnsw" in args.kinds:
        configs.append(("hnsw", {"m": args.hnsw_m, "ef_construction": args.ef_construction}, "ef_search",
                        args.ef_search))
    if "ivfpq" in args.kinds:
        configs.append(("ivfpq", {}, "nprobe", args.nprobe))
    if "lsh" in args.kinds:
        configs.append(("lsh", {}, "nflip", args.nflip))
    for kind, params, knob, values in configs:
        t0 = time.perf_counter()
        index = build_index(kind, x, ids, **params)
        build_s = time.perf_counter() - t0
        print(f"{kind}: built in {build_s:.1f} s {index.parameters}", file=sys.stderr)
        for value in values:
            setattr(index, knob, value)
            for name, q in queries.items():
                got, qps = timed_search(index, q, args.k)
                r = recall(truth[name], got)
                rows.append({"n": n, "dim": dim, "kind": kind, "setting": f"{knob}={value}", "queries": name,
                             "build_s": build_s, "qps": qps, "speedup": qps / exact_qps[name], "recall@10": r,
                             "source_found": _found(got, sources) if name == "near" else None,
                             "parameters": index.parameters})
                if args.json:
                    write_json(args.json, {"partial": True, "rows": rows})
                print(f"  {knob}={value} {name}: {qps:,.0f} q/s, recall@10 {r:.3f}", file=sys.stderr)
        del index
    return rows


def bench_dedup(n: int, dim: int, args: argparse.Namespace, rng: np.random.Generator) -> dict[str, Any]:
    """Full dedup over ``n`` vectors with planted groups (1% of the rows in groups of 2-5 at cosine >= 0.95)."""
    from reformer_retrieval.dedup import find_duplicates

    if args.data == "lowrank":
        x = lowrank(rng, n, dim, basis=(rng.standard_normal((32, dim)) / np.sqrt(32)).astype(np.float32))
    else:
        x = unit(rng, n, dim)
    n_groups = n // 300
    planted = 0
    heads = rng.choice(n, n_groups, replace=False)
    free = np.setdiff1d(np.arange(n), heads)
    rng.shuffle(free)
    pos = 0
    truth = np.arange(n)
    for h in heads:
        size = int(rng.integers(1, 5))
        members = free[pos:pos + size]
        pos += size
        x[members] = near(rng, np.repeat(x[h:h + 1], size, axis=0), float(rng.uniform(0.95, 0.995)))
        truth[members] = h
        planted += size
    t0 = time.perf_counter()
    res = find_duplicates(list(range(n)), vectors=x, method="embedding", threshold=0.9, index=args.dedup_index,
                          k=args.dedup_k, keep="first", show_progress=True,
                          index_params={"m": args.hnsw_m, "ef_construction": args.ef_construction}
                          if args.dedup_index == "hnsw" else None)
    total = time.perf_counter() - t0
    from reformer_retrieval.evaluate import dedup_metrics

    m = dedup_metrics(res.cluster_id, truth)
    return {"n": n, "dim": dim, "data": args.data, "index": args.dedup_index, "k": args.dedup_k, "threshold": 0.9,
            "planted_duplicates": planted, "found_duplicates": res.summary["duplicates"],
            "pairwise_recall": m.recall, "pairwise_precision": m.precision, "seconds": total,
            "stage_seconds": res.summary["seconds"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="100000", help="comma list of database sizes (1000000 for the 1M run)")
    p.add_argument("--dim", type=int, default=None, help="vector width [the default model's embedding_dim]")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--kinds", default="hnsw,ivfpq,lsh")
    p.add_argument("--hnsw-m", type=int, default=32)
    p.add_argument("--ef-construction", type=int, default=80)
    p.add_argument("--ef-search", default="64,128,256,512")
    p.add_argument("--nprobe", default="8,32,128")
    p.add_argument("--nflip", default="1,2")
    p.add_argument("--near", action="store_true", help="also near-duplicate queries (cosine 0.9)")
    p.add_argument("--data", default="random", choices=["random", "lowrank"],
                   help="uniform random unit vectors (the hardest case), or embedding-like vectors of rank 32 + noise")
    p.add_argument("--no-dedup", action="store_true", help="skip the full dedup run")
    p.add_argument("--dedup-index", default="hnsw", choices=["flat", "hnsw", "ivfpq", "lsh"])
    p.add_argument("--dedup-k", type=int, default=16)
    p.add_argument("--threads", type=int, default=None, help="FAISS threads [all cores]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    args.kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]  # "" = exact search only
    args.ef_search = [int(v) for v in args.ef_search.split(",")]
    args.nprobe = [int(v) for v in args.nprobe.split(",")]
    args.nflip = [int(v) for v in args.nflip.split(",")]

    from reformer_retrieval.indexes import set_threads

    threads = set_threads(args.threads)
    dim = args.dim or default_dim()
    sizes = [int(s) for s in args.sizes.split(",")]
    rng = np.random.default_rng(args.seed)
    rows = []
    for n in sizes:
        rows.extend(bench_size(n, dim, args, rng))
        if args.json:
            write_json(args.json, {"partial": True, "threads": threads, "rows": rows})
    dedup = None if args.no_dedup else bench_dedup(max(sizes), dim, args, rng)

    print(f"\nFAISS threads: {threads}; data: {args.data}; k = {args.k}; {args.queries:,} queries; recall@10 against "
          "exact search")
    print(markdown_table(
        ["n", "index", "setting", "queries", "build s", "queries/s", "vs exact", "recall@10", "source found"],
        [[f"{r['n']:,}", r["kind"], r["setting"], r["queries"], f"{r['build_s']:.1f}", f"{r['qps']:,.0f}",
          fmt_ratio(r["speedup"], 1.0, 1), f"{r['recall@10']:.3f}",
          "–" if r.get("source_found") is None else f"{r['source_found']:.3f}"] for r in rows],
        align="rllrrrrrr"))
    if dedup:
        print(f"\nfull dedup of {dedup['n']:,} {args.data} vectors ({dedup['index']}, k={dedup['k']}, cosine >= 0.9): "
              f"{dedup['seconds']:.1f} s {dedup['stage_seconds']}; planted {dedup['planted_duplicates']:,} "
              f"duplicates, found {dedup['found_duplicates']:,}; pairwise recall {dedup['pairwise_recall']:.4f}, "
              f"precision {dedup['pairwise_precision']:.4f}")
    if args.json:
        write_json(args.json, {"threads": threads, "data": args.data, "rows": rows, "dedup": dedup})
    return 0


if __name__ == "__main__":
    sys.exit(main())
