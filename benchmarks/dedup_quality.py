"""Dedup quality on a labelled corpus: ours (embedding, hybrid, MinHash) vs datasketch MinHash LSH.

Every method sweeps its threshold on the same file and is reported at its own best pairwise F1
(ARI, pairwise precision / recall / F1 at that threshold, plus the best-ARI threshold), with the wall
time of one run at that threshold (text -> clusters; the encoding time of the embedding methods is
shown separately, since the vectors are shared with search). The anchor is datasketch's MinHashLSH
(word 3-grams, 128 permutations, its own threshold -> bands x rows, candidates taken as it returns
them) with the same word tokenisation and union-find clustering. Our MinHash uses the library default
shingling (word 2-grams) unless ``--ngram 3`` asks for the anchor's.

    python benchmarks/dedup_quality.py ../shared/data/dev/wiki_versions/corpus.parquet
    python benchmarks/dedup_quality.py ../shared/data/dev/wiki_versions/corpus.parquet --noise ocr
    python benchmarks/dedup_quality.py LABELLED.parquet --methods minhash,datasketch --json rows.json

``--noise ocr`` replaces every text by an OCR-noised copy (``reformer_retrieval.train.augment`` preset
"ocr", seeded per document) before anything runs. ``--sweep-table`` prints every method's sweep.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fmt_ratio, markdown_table, write_json

ALL_METHODS = ("datasketch", "minhash", "embedding", "hybrid")
_WORD = re.compile(r"\w+")


def _grid(spec: str) -> list[float]:
    """Thresholds of ``START:STOP:STEP[,START:STOP:STEP...]`` (several ranges: coarse, then fine near 1)."""
    values: set[float] = set()
    for part in spec.split(","):
        start, stop, step = (float(x) for x in part.split(":"))
        values.update(round(start + i * step, 6) for i in range(round((stop - start) / step) + 1))
    return sorted(values)


def load(path: str, id_column: str, text_column: str, label_column: str, noise: str | None, strength: float,
         seed: int, limit: int | None) -> tuple[list[Any], list[str], list[Any]]:
    """Ids, texts (noised if asked) and labels of the labelled file."""
    table = pq.read_table(path, columns=[id_column, text_column, label_column])
    ids = table.column(id_column).to_pylist()
    texts = table.column(text_column).to_pylist()
    labels = table.column(label_column).to_pylist()
    if limit:
        ids, texts, labels = ids[:limit], texts[:limit], labels[:limit]
    if noise:
        from reformer_retrieval.train.augment import augment

        texts = [augment(t, strength=strength, seed=(seed, i), preset=noise) for i, t in enumerate(texts)]
    return ids, texts, labels


# ----------------------------------------------------------------------------------------------- datasketch
def datasketch_run(texts: list[str], threshold: float, num_perm: int = 128, ngram: int = 3,
                   signatures: list[Any] | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, float], list[Any]]:
    """datasketch MinHash + MinHashLSH: candidate pairs (as returned, unverified) and timings."""
    from datasketch import MinHash, MinHashLSH

    times: dict[str, float] = {}
    t0 = time.perf_counter()
    if signatures is None:
        signatures = []
        for text in texts:
            words = _WORD.findall(text.lower())
            n = min(ngram, len(words))
            shingles = {" ".join(words[i:i + n]).encode("utf-8") for i in range(max(len(words) - n + 1, 1))}
            m = MinHash(num_perm=num_perm)
            if words:
                m.update_batch(list(shingles))
            signatures.append(m)
    times["signatures"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    for i, m in enumerate(signatures):
        lsh.insert(i, m)
    a, b = [], []
    for i, m in enumerate(signatures):
        for j in lsh.query(m):
            if j > i:
                a.append(i)
                b.append(j)
    times["lsh"] = time.perf_counter() - t0
    return np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64), times, signatures


def sweep_datasketch(texts: list[str], labels: list[Any], thresholds: list[float]) -> tuple[list[Any], dict]:
    """Sweep datasketch's own threshold (one LSH per threshold; signatures computed once)."""
    from reformer_retrieval.dedup import union_find
    from reformer_retrieval.evaluate import dedup_metrics

    rows, sigs = [], None
    for t in thresholds:
        a, b, _, sigs = datasketch_run(texts, t, signatures=sigs)
        m = dedup_metrics(union_find(len(texts), a, b), labels)
        m.threshold = t
        rows.append(m)
    best = max(rows, key=lambda r: r.f1)
    t0 = time.perf_counter()
    a, b, times, _ = datasketch_run(texts, best.threshold)
    union_find(len(texts), a, b)
    total = time.perf_counter() - t0
    return rows, {"seconds": total, **{f"{k}_s": v for k, v in times.items()}}


# ----------------------------------------------------------------------------------------------- ours
def sweep_ours(method: str, ids: list[Any], texts: list[str], labels: list[Any], vectors: np.ndarray | None,
               thresholds: list[float], minhash_threshold: float | None, index: str, shingle: str = "word",
               ngram: int = 2) -> tuple[list[Any], dict]:
    """Sweep one of our methods, then time one full run at its best threshold."""
    from reformer_retrieval.dedup import find_duplicates
    from reformer_retrieval.evaluate import sweep_dedup

    kwargs = {"index": index, "keep": "longest", "shingle": shingle, "ngram": ngram}
    rows, _ = sweep_dedup(ids, labels, thresholds, method=method, vectors=vectors,
                          texts=texts if method != "embedding" else None, minhash_threshold=minhash_threshold,
                          **kwargs)
    best = max(rows, key=lambda r: r.f1)
    t0 = time.perf_counter()
    res = find_duplicates(ids, vectors=vectors, texts=texts, method=method, threshold=best.threshold,
                          minhash_threshold=minhash_threshold, **kwargs)
    total = time.perf_counter() - t0
    return rows, {"seconds": total, **{f"{k}_s": v for k, v in res.summary["seconds"].items() if k != "total"}}


def encode(ids: list[Any], texts: list[str], model: str | None, device: str, embeddings: str | None) -> tuple:
    """Vectors of the texts (from --embeddings when given, else encoded now) and the encode time."""
    from reformer_retrieval.corpus import read_embeddings

    if embeddings:
        table = read_embeddings(embeddings)
        pos = {d: i for i, d in enumerate(table.ids)}
        return table.vectors[[pos[d] for d in ids]], 0.0, table.model_id
    from reformer_retrieval.encode import Encoder

    enc = Encoder.load(model, device=device)
    t0 = time.perf_counter()
    vectors = enc.encode(texts, show_progress=True)
    return vectors, time.perf_counter() - t0, enc.model_id


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("labelled", help="Parquet with id, text and a cluster label column")
    p.add_argument("--id-column", default="id")
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="cluster")
    p.add_argument("--methods", default=",".join(ALL_METHODS), help=f"comma list of {', '.join(ALL_METHODS)}")
    p.add_argument("--model", default=None, help="model directory (default: bundled)")
    p.add_argument("--embeddings", default=None, help="precomputed embeddings of the (un-noised) file")
    p.add_argument("--device", default="auto")
    p.add_argument("--index", default="flat", choices=["flat", "hnsw", "ivfpq", "lsh"])
    p.add_argument("--noise", default=None, choices=["ocr", "near_duplicate"], help="noise every text first")
    p.add_argument("--noise-strength", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="first N rows only (smoke runs)")
    p.add_argument("--jaccard-grid", default="0.05:0.9:0.05", help="START:STOP:STEP of Jaccard thresholds")
    p.add_argument("--cosine-grid", default="0.2:0.99:0.01,0.99:0.9999:0.0003",
                   help="START:STOP:STEP[,...] of cosine thresholds (default: coarse, then fine above 0.99)")
    p.add_argument("--minhash-threshold", type=float, default=None,
                   help="Jaccard side of hybrid (default: the best of our MinHash sweep, else the library default)")
    p.add_argument("--shingle", default="word", choices=["word", "char"], help="our MinHash shingle unit [word]")
    p.add_argument("--ngram", type=int, default=2,
                   help="our MinHash shingle length [2, the library default; 3 = the anchor's shingling]")
    p.add_argument("--sweep-table", action="store_true", help="print every sweep")
    p.add_argument("--json", default=None, help="write the rows (and sweeps) as JSON")
    args = p.parse_args(argv)

    from reformer_retrieval.dedup import DEFAULT_MINHASH_THRESHOLD, default_threshold
    from reformer_retrieval.evaluate import format_sweep

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(methods) - set(ALL_METHODS)
    if unknown:
        p.error(f"unknown method(s) {sorted(unknown)}")
    if args.noise and args.embeddings:
        p.error("--embeddings are of the clean texts; drop them with --noise")
    ids, texts, labels = load(args.labelled, args.id_column, args.text_column, args.label_column, args.noise,
                              args.noise_strength, args.seed, args.limit)
    jgrid, cgrid = _grid(args.jaccard_grid), _grid(args.cosine_grid)
    print(f"{args.labelled}: {len(ids):,} documents, {len(set(labels)):,} clusters"
          + (f", noise={args.noise} strength={args.noise_strength}" if args.noise else ""), file=sys.stderr)

    results: dict[str, dict[str, Any]] = {}
    sweeps: dict[str, list[Any]] = {}
    if "datasketch" in methods:
        sweeps["datasketch"], results["datasketch"] = sweep_datasketch(texts, labels, jgrid)
    if "minhash" in methods:
        sweeps["minhash"], results["minhash"] = sweep_ours("minhash", ids, texts, labels, None, jgrid, None,
                                                            args.index, args.shingle, args.ngram)
    vectors = None
    encode_s = 0.0
    model_id = None
    if {"embedding", "hybrid"} & set(methods):
        vectors, encode_s, model_id = encode(ids, texts, args.model, args.device, args.embeddings)
    mt = args.minhash_threshold
    if mt is None:
        mt = max(sweeps["minhash"], key=lambda r: r.f1).threshold if "minhash" in sweeps else DEFAULT_MINHASH_THRESHOLD
    for method in ("embedding", "hybrid"):
        if method in methods:
            sweeps[method], results[method] = sweep_ours(method, ids, texts, labels, vectors, cgrid, mt, args.index,
                                                         args.shingle, args.ngram)
            results[method]["encode_s"] = encode_s

    anchor = results.get("datasketch", {}).get("seconds")
    # the hybrid's cosine edge has its own default (training.json "hybrid_dedup_threshold")
    defaults = {"minhash": DEFAULT_MINHASH_THRESHOLD, "datasketch": None,
                "embedding": default_threshold("embedding", args.model),
                "hybrid": default_threshold("hybrid", args.model)}
    rows, table_rows = [], []
    for method in [m for m in ALL_METHODS if m in sweeps]:
        best = max(sweeps[method], key=lambda r: r.f1)
        best_ari = max(sweeps[method], key=lambda r: r.ari)
        at_default = None
        if defaults[method] is not None:
            at_default = min(sweeps[method], key=lambda r: abs(r.threshold - defaults[method]))
        info = results[method]
        row = {
            "method": method, "best_threshold": best.threshold, "ari": best.ari, "precision": best.precision,
            "recall": best.recall, "f1": best.f1, "best_ari_threshold": best_ari.threshold, "best_ari": best_ari.ari,
            "default_threshold": defaults[method], "f1_at_default": at_default.f1 if at_default else None,
            "ari_at_default": at_default.ari if at_default else None,
            "minhash_threshold": mt if method == "hybrid" else None,
            "seconds": info["seconds"], "encode_seconds": info.get("encode_s"),
            "time_vs_datasketch": info["seconds"] / anchor if anchor else None,
            "stage_seconds": {k: v for k, v in info.items() if k.endswith("_s")},
            "noise": args.noise, "documents": len(ids), "model_id": model_id if method in ("embedding", "hybrid")
            else None,
        }
        rows.append(row)
        label = {"datasketch": "datasketch MinHashLSH (anchor)",
                 "minhash": f"ours: MinHash ({args.shingle} {args.ngram}-grams) + exact Jaccard",
                 "embedding": "ours: embedding (cosine)", "hybrid": f"ours: hybrid (Jaccard >= {mt:g} or cosine)"}
        table_rows.append([
            label[method], f"{best.threshold:g}", f"{best.ari:.4f}", f"{best.precision:.4f}", f"{best.recall:.4f}",
            f"{best.f1:.4f}", f"{best_ari.threshold:g} ({best_ari.ari:.4f})", f"{info['seconds']:.2f}",
            f"{encode_s:.1f}" if method in ("embedding", "hybrid") else "–",
            fmt_ratio(info["seconds"], anchor) if anchor else "–",
        ])
    print(markdown_table(
        ["method", "best-F1 threshold", "ARI", "precision", "recall", "F1", "best-ARI threshold (ARI)",
         "dedup s", "encode s", "time / datasketch"], table_rows, align="lrrrrrrrrr"))
    if args.sweep_table:
        for method, sweep in sweeps.items():
            print(f"\n{method}:\n{format_sweep(sweep, mark=defaults.get(method))}")
    if args.json:
        write_json(args.json, {"rows": rows, "sweeps": {k: [m.to_dict() for m in v] for k, v in sweeps.items()}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
