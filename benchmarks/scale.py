"""Scale of the staged dedup: generated data with planted near-duplicates, local vs Ray engine (vs datasketch).

``--method minhash`` (default): for every size, one corpus is generated (``--seed``; 30-word documents over a
50K-word vocabulary, every tenth document followed by 1-3 copies with ~5% of the words replaced) and
deduplicated by `dedup_pipeline` (``method="minhash"``, Jaccard 0.5, word 2-grams, 128 permutations) with
each engine. The ``datasketch`` engine runs the same documents through datasketch instead: ``MinHash``
(128 permutations, seed 1) of the same lower-cased word 2-grams, ``MinHashLSH(threshold=0.5)`` (its own
bands x rows, 25 x 5 as ours), each document queried then inserted, candidate pairs kept when their MinHash
Jaccard estimate is >= 0.5 (datasketch leaves verification to the caller), clusters by SciPy connected
components.

``--method embedding``: an embeddings dataset of ``n`` unit vectors (``--dim`` 256, of rank ``--rank`` 64:
Gaussian coefficients times a fixed random basis), a tenth of them replaced by a near copy of another
(cosine drawn uniformly from [``--threshold`` + 0.01, 0.995], at random positions), written in the format
``encode`` writes, beside a corpus of the same ids; `dedup_pipeline(method="embedding", embeddings=...)`
with sign-random-projection bands (``index="lsh"``) at cosine ``--threshold`` (0.95).

Each run is a fresh child process. Reported: documents/s, seconds per stage, peak RSS of the driver process
(for Ray, the workers' memory is not included: they are separate processes), and the planted pairs found.

    python benchmarks/scale.py                         # 100K documents, local and ray
    python benchmarks/scale.py --sizes 100000,1000000 --engines local,datasketch --json scale.json
    python benchmarks/scale.py --method embedding --sizes 1000000 --engines local,ray
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import child_main, markdown_table, peak_rss_mb, run_in_subprocess, write_json

ENGINES = ("local", "ray", "datasketch")
METHODS = ("minhash", "embedding")


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


def make_vectors(corpus: Path, embeddings: Path, n: int, seed: int = 0, dim: int = 256, rank: int = 64,
                 threshold: float = 0.95) -> int:
    """Write ``n`` planted unit vectors to ``embeddings`` and a corpus of their ids to ``corpus``; returns the pairs.

    The vectors are ``rank``-dimensional Gaussian coefficients times a fixed random ``rank x dim`` basis,
    normalised; ``n // 10`` of them, at random positions, are replaced by a near copy of another (exact
    cosine drawn uniformly from ``[threshold + 0.01, 0.995]``). The corpus holds ``id``, a one-word ``text``
    and ``group`` (the row of the pair's source, else the row itself).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from reformer_retrieval.corpus import EmbeddingWriter

    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((rank, dim)).astype(np.float32)
    x = np.empty((n, dim), np.float32)
    for s in range(0, n, 65_536):
        block = rng.standard_normal((min(65_536, n - s), rank)).astype(np.float32) @ basis
        x[s:s + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    m = n // 10
    order = rng.permutation(n)
    copies, sources = order[:m], order[m:2 * m]
    cos = rng.uniform(min(threshold + 0.01, 0.995), 0.995, size=m).astype(np.float32)
    noise = rng.standard_normal((m, dim)).astype(np.float32)
    v = x[sources]
    noise -= (noise * v).sum(axis=1, keepdims=True) * v  # orthogonal to the source: the cosine is exactly cos
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    x[copies] = cos[:, None] * v + np.sqrt(1 - cos**2)[:, None] * noise
    group = np.arange(n)
    group[copies] = sources
    ids = [f"v{i:08d}" for i in range(n)]
    with EmbeddingWriter(embeddings, dim=dim, model_id=f"scale-benchmark-rank{rank}") as w:
        for s in range(0, n, 65_536):
            e = min(n, s + 65_536)
            w.write(ids[s:e], x[s:e], np.ones(e - s, np.int32), np.zeros(e - s, bool))
    pq.write_table(pa.table({"id": ids, "text": [f"t{i}" for i in range(n)], "group": group}), corpus,
                   row_group_size=65_536)
    return m


def cpu_seconds() -> float:
    """CPU seconds (user + system) of this process, its reaped children, and its live descendants with theirs.

    The descendants (read from Linux ``/proc``; none elsewhere) include a local Ray instance started by this
    process: its raylet, whose reaped workers count through it, and its live workers. Unlike wall time, this
    does not grow when other jobs share the cores.
    """
    import resource

    total = sum(getattr(resource.getrusage(w), f) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
                for f in ("ru_utime", "ru_stime"))
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stats[int(entry.name)] = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError, ValueError):
            continue  # gone, or not Linux
    children: dict[int, list[int]] = {}
    for pid, f in stats.items():
        children.setdefault(int(f[1]), []).append(pid)
    todo, ticks = list(children.get(os.getpid(), [])), os.sysconf("SC_CLK_TCK")
    while todo:
        pid = todo.pop()
        f = stats[pid]
        total += sum(int(v) for v in f[11:15]) / ticks  # utime, stime, cutime, cstime
        todo.extend(children.get(pid, []))
    return total


def _datasketch(spec: dict[str, Any]) -> dict[str, Any]:
    """datasketch MinHash + MinHashLSH on the corpus (see the module docstring), timed per step."""
    import pyarrow.parquet as pq
    from datasketch import MinHash, MinHashLSH
    from model_quality import shingles
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    threshold, num_perm = 0.5, 128
    stages: dict[str, float] = {}
    t0 = time.perf_counter()
    texts = pq.read_table(spec["corpus"], columns=["text"]).column("text").to_pylist()
    n = len(texts)
    stages["read"] = time.perf_counter() - t0
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    values = np.empty((n, num_perm), np.uint64)
    pa_, pb_ = [], []
    t_sketch = t_lsh = 0.0

    # each document's distinct lower-cased word 2-grams (all its words as one shingle when it has fewer than 2)
    gen = MinHash.generator((list(set(shingles(t, 2))) for t in texts), num_perm=num_perm, seed=1)
    for i in range(n):
        t1 = time.perf_counter()
        mh = next(gen)
        values[i] = mh.hashvalues
        t2 = time.perf_counter()
        for j in lsh.query(mh):  # earlier documents sharing a band: each pair once
            pa_.append(j)
            pb_.append(i)
        lsh.insert(i, mh, check_duplication=False)
        t_sketch += t2 - t1
        t_lsh += time.perf_counter() - t2
    stages["sketch"], stages["lsh"] = t_sketch, t_lsh
    t1 = time.perf_counter()
    a, b = np.asarray(pa_, np.int64), np.asarray(pb_, np.int64)
    keep = np.zeros(len(a), bool)
    for s in range(0, len(a), 1_000_000):  # the MinHash estimate of each candidate pair, vectorised
        keep[s:s + 1_000_000] = (values[a[s:s + 1_000_000]] == values[b[s:s + 1_000_000]]).mean(axis=1) >= threshold
    a, b = a[keep], b[keep]
    stages["verify"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    graph = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n, n)).tocsr()
    n_clusters, cluster = connected_components(graph, directed=False)
    stages["components"] = time.perf_counter() - t1
    stages["total"] = time.perf_counter() - t0
    return {"ids": n, "cluster_id": cluster, "pair_a": a, "pair_b": b, "clusters": int(n_clusters),
            "candidates": len(keep), "stages": {k: round(v, 3) for k, v in stages.items()}}


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    import pyarrow.parquet as pq

    from reformer_retrieval.evaluate import dedup_metrics

    group = pq.read_table(spec["corpus"], columns=["group"]).column("group").to_numpy()
    if spec["engine"] == "datasketch":
        load0, cpu0, t0 = os.getloadavg()[0], cpu_seconds(), time.perf_counter()
        res = _datasketch(spec)
        seconds = time.perf_counter() - t0
        same = group[res["pair_a"]] == group[res["pair_b"]]
        return {**spec, "status": "ok", "seconds": round(seconds, 2), "docs_per_s": round(res["ids"] / seconds, 1),
                "cpu_seconds": round(cpu_seconds() - cpu0, 1), "load_1min": [load0, os.getloadavg()[0]],
                "peak_rss_mb": round(peak_rss_mb(), 1), "stages": res["stages"], "clusters": res["clusters"],
                "candidate_pairs": res["candidates"], "verified_pairs": len(res["pair_a"]),
                "false_pairs": int((~same).sum()),
                "planted_found": dedup_metrics(res["cluster_id"], group).correct_pairs}
    return _pipeline_child(spec, group)


def _pipeline_child(spec: dict[str, Any], group: np.ndarray) -> dict[str, Any]:
    from reformer_retrieval.evaluate import dedup_metrics
    from reformer_retrieval.pipeline import dedup_pipeline

    engine = None
    if spec["engine"] == "ray":
        import ray

        from reformer_retrieval.ray_engine import RayEngine

        ray.init(num_cpus=spec["cpus"], include_dashboard=False, log_to_driver=False)
        engine = RayEngine()
    load0, cpu0, t0 = os.getloadavg()[0], cpu_seconds(), time.perf_counter()
    if spec.get("method", "minhash") == "embedding":
        res = dedup_pipeline(spec["corpus"], spec["out"], method="embedding", embeddings=spec["embeddings"],
                             threshold=spec["threshold"], index="lsh", engine=engine)
    else:
        res = dedup_pipeline(spec["corpus"], spec["out"], method="minhash", threshold=0.5, engine=engine)
    seconds = time.perf_counter() - t0
    cpu, load1 = cpu_seconds() - cpu0, os.getloadavg()[0]
    same = group[res.pair_a] == group[res.pair_b]
    # planted pairs found: pairs of the same planted group that end in one cluster
    found = dedup_metrics(res.cluster_id, group).correct_pairs
    return {**spec, "status": "ok", "seconds": round(seconds, 2), "docs_per_s": round(len(res.ids) / seconds, 1),
            "cpu_seconds": round(cpu, 1), "load_1min": [load0, load1], "peak_rss_mb": round(peak_rss_mb(), 1), "stages": res.summary["seconds"],
            "clusters": res.summary["clusters"], "candidate_pairs": res.summary["candidate_pairs"],
            "verified_pairs": res.summary["verified_pairs"], "largest_bucket": res.summary["largest_bucket"],
            "false_pairs": int((~same).sum()), "planted_found": found}


def summary_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Time growth per engine from its smallest to its largest size, and datasketch's time over ours per size."""
    ok = [r for r in rows if r.get("status") == "ok"]
    lines = []
    for engine in dict.fromkeys(r["engine"] for r in ok):
        mine = sorted((r for r in ok if r["engine"] == engine), key=lambda r: r["n"])
        if len(mine) > 1:
            lo, hi = mine[0], mine[-1]
            cpu = (f", CPU seconds {hi['cpu_seconds'] / lo['cpu_seconds']:.2f}x"
                   if lo.get("cpu_seconds") and hi.get("cpu_seconds") else "")
            lines.append(f"{engine}: {lo['n']:,} -> {hi['n']:,} documents ({hi['n'] / lo['n']:.1f}x): time "
                         f"{hi['seconds'] / lo['seconds']:.2f}x{cpu}, driver peak RSS {hi['peak_rss_mb']:,.0f} MiB")
    for r in ok:
        if r["engine"] != "datasketch":
            ds = [d for d in ok if d["engine"] == "datasketch" and d["n"] == r["n"]]
            if ds:
                lines.append(f"{r['n']:,} documents: datasketch {ds[0]['seconds']} s / {r['engine']} {r['seconds']} s "
                             f"= {ds[0]['seconds'] / r['seconds']:.2f}x")
    return lines


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 2 and sys.argv[1] == "--child":
        return child_main(_child, sys.argv[2])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000", help="comma-separated corpus sizes [100000]")
    parser.add_argument("--engines", default="local,ray", help="comma-separated: local, ray, datasketch [local,ray]")
    parser.add_argument("--method", default="minhash", choices=METHODS, help="what is deduplicated [minhash]")
    parser.add_argument("--threshold", type=float, default=0.95, help="cosine threshold of --method embedding")
    parser.add_argument("--dim", type=int, default=256, help="vector width of --method embedding [256]")
    parser.add_argument("--rank", type=int, default=64, help="rank of the vectors of --method embedding [64]")
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
    if args.method == "embedding" and "datasketch" in engines:
        parser.error("the datasketch engine runs --method minhash only")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for n in sizes:
            corpus = work / f"corpus-{args.method}-{n}.parquet"
            t0 = time.perf_counter()
            extra: dict[str, Any] = {}
            if args.method == "embedding":
                extra = {"embeddings": str(work / f"embeddings-{n}.parquet"), "threshold": args.threshold,
                         "dim": args.dim, "rank": args.rank}
                planted = make_vectors(corpus, Path(extra["embeddings"]), n, args.seed, args.dim, args.rank,
                                       args.threshold)
            else:
                planted = make_corpus(corpus, n, args.seed)
            print(f"generated {n:,} {args.method} documents ({planted:,} planted pairs) in "
                  f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
            for engine in engines:
                spec = {"n": n, "engine": engine, "method": args.method, "corpus": str(corpus),
                        "out": str(work / f"out-{args.method}-{n}-{engine}"), "cpus": args.cpus, "planted": planted,
                        **extra}
                row = run_in_subprocess(Path(__file__), spec, args.timeout)
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
    table = [[r["n"], r["engine"], r.get("status"), r.get("seconds", ""), r.get("docs_per_s", ""),
              r.get("peak_rss_mb", ""), f"{r.get('planted_found', 0):,} / {r['planted']:,}", r.get("false_pairs", ""),
              ", ".join(f"{k} {v:.1f}" for k, v in (r.get("stages") or {}).items() if k != "total"),
              r.get("candidate_pairs", ""), r.get("cpu_seconds", ""), r["method"]] for r in rows]
    print(markdown_table(["docs", "engine", "status", "seconds", "docs/s", "driver peak RSS (MiB)",
                          "planted pairs together", "false pairs", "seconds per stage", "candidate pairs",
                          "CPU seconds", "method"], table))
    for line in summary_lines(rows):
        print(line)
    if args.json:
        write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
