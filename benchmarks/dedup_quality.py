"""Dedup quality on a labelled corpus: ours (embedding, hybrid, MinHash) vs datasketch MinHash LSH.

Every method sweeps its threshold on the same file and is reported at its own best pairwise F1
(ARI, pairwise precision / recall / F1 at that threshold, plus the best-ARI threshold), with the wall
time of one run at that threshold (text -> clusters; the encoding time of the embedding methods is
shown separately, since the vectors are shared with search). The anchor is datasketch's MinHashLSH
(word 3-grams, 128 permutations, its own threshold -> bands x rows, candidates taken as it returns
them) with the same word tokenisation and union-find clustering. Our MinHash uses the library default
shingling (word 2-grams) unless ``--ngram 3`` asks for the anchor's.

Beside the model's embedding, each of its channels alone is a row (``--channel-rows``, on by default: the
same vectors cut to that channel's columns and re-normalised), and so is the baseline a user would pick
instead, all-MiniLM-L6-v2 over consecutive 1,000-character chunks, mean of the chunk vectors (``--minilm``,
on by default when the ``bench`` extra is installed; ``benchmarks/minilm_baseline.py``, vectors cached in
``--minilm-cache``). Every row gives its speed in characters per second on this CPU: encoding for the
embeddings (a channel row: at least the model's), text -> clusters for the MinHash methods.

    python benchmarks/dedup_quality.py                # the wiki_versions dev set (../shared/data/dev)
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
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fmt_ratio, markdown_table, write_json
from model_quality import channel_views, cluster_subset, noisy_copy
from vector_cache import DEFAULT_CACHE_ROOT

ALL_METHODS = ("datasketch", "minhash", "embedding", "hybrid", "minilm")
DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "dev" / "wiki_versions" / "corpus.parquet"
_WORD = re.compile(r"\w+")


def _grid(spec: str) -> list[float]:
    """Thresholds of ``START:STOP:STEP[,START:STOP:STEP...]`` (several ranges: coarse, then fine near 1)."""
    values: set[float] = set()
    for part in spec.split(","):
        start, stop, step = (float(x) for x in part.split(":"))
        values.update(round(start + i * step, 6) for i in range(round((stop - start) / step) + 1))
    return sorted(values)


def load(path: str, id_column: str, text_column: str, label_column: str, noise: str | None, strength: float,
         seed: int, limit: int | None, max_clusters: int = 0,
         subset_seed: int = 0) -> tuple[list[Any], list[str], list[Any]]:
    """Ids, texts (noised if asked) and labels of the labelled file.

    ``max_clusters`` takes a seeded subset of whole clusters, the same one as ``model_quality.py
    --max-clusters N --seed subset_seed``; each text is noised with the seed ``(seed, its row in the file)``,
    as model_quality.py does, so both benchmarks score (and cache) the same texts.
    """
    table = pq.read_table(path, columns=[id_column, text_column, label_column])
    ids = table.column(id_column).to_pylist()
    texts = table.column(text_column).to_pylist()
    labels = table.column(label_column).to_pylist()
    rows = list(range(len(ids)))
    if max_clusters:
        rows = cluster_subset(np.asarray([str(c) for c in labels]), max_clusters, subset_seed).tolist()
    if limit:
        rows = rows[:limit]
    ids, texts, labels = [ids[r] for r in rows], [texts[r] for r in rows], [labels[r] for r in rows]
    if noise:
        texts = noisy_copy(texts, rows, strength, seed, noise)
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


def encode(ids: list[Any], texts: list[str], model: str | None, device: str, embeddings: str | None,
           cache: str | Path | None = None) -> tuple:
    """Vectors of the texts (from --embeddings when given, else encoded now), the encode time, the model id
    and the model's channels (``model.channels()``: ``{name: (columns, share)}``; empty when the embeddings are of another model). With
    ``cache`` (a folder), vectors are looked up by text hash and new ones kept (`vector_cache.encoder_cache`);
    the time is then the cache's record of chars/s turned into seconds for these texts."""
    from reformer_retrieval.corpus import read_embeddings
    from reformer_retrieval.encode import Encoder

    enc = Encoder.load(model, device=device)
    channels = enc.model.channels()
    if embeddings:
        table = read_embeddings(embeddings)
        pos = {d: i for i, d in enumerate(table.ids)}
        return (table.vectors[[pos[d] for d in ids]], 0.0, table.model_id,
                channels if table.model_id == enc.model_id else {})
    from vector_cache import encode_cached, encoder_cache

    store = encoder_cache(enc, cache) if cache is not None else None
    vectors, info = encode_cached(lambda group: enc.encode(group, show_progress=True), texts, store)
    seconds = info["seconds"]
    if info["chars_per_s"]:  # texts partly or wholly cached: the time all of them take at the measured speed
        seconds = sum(len(t) for t in texts) / info["chars_per_s"]
    if info["chars_per_s_from_cache"]:
        print(f"model vectors from the cache {store.npy}; encode time from its chars/s record", file=sys.stderr)
    return vectors, seconds, enc.model_id, channels


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("labelled", nargs="?", default=None,
                   help="Parquet with id, text and a cluster label column (default: the wiki_versions dev set)")
    p.add_argument("--data", default=None, help="the labelled Parquet (same as the positional argument)")
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
    p.add_argument("--max-clusters", type=int, default=0,
                   help="seeded subset of whole clusters, the same as model_quality.py's (0 = all)")
    p.add_argument("--subset-seed", type=int, default=0, help="seed of the cluster subset (model_quality's --seed)")
    p.add_argument("--jaccard-grid", default="0.05:0.9:0.05", help="START:STOP:STEP of Jaccard thresholds")
    p.add_argument("--cosine-grid", default="0.2:0.99:0.01,0.99:0.9999:0.0003",
                   help="START:STOP:STEP[,...] of cosine thresholds (default: coarse, then fine above 0.99)")
    p.add_argument("--minhash-threshold", type=float, default=None,
                   help="Jaccard side of hybrid (default: the best of our MinHash sweep, else the library default)")
    p.add_argument("--shingle", default="word", choices=["word", "char"], help="our MinHash shingle unit [word]")
    p.add_argument("--ngram", type=int, default=2,
                   help="our MinHash shingle length [2, the library default; 3 = the anchor's shingling]")
    p.add_argument("--channel-rows", action=argparse.BooleanOptionalAction, default=True,
                   help="a row for each channel of the model's embedding alone [on]")
    p.add_argument("--minilm", action=argparse.BooleanOptionalAction, default=None,
                   help="the all-MiniLM-L6-v2 1,000-char chunk-mean row (default: on when the bench extra is installed)")
    p.add_argument("--minilm-cache", default=None,
                   help="folder of the MiniLM vector cache (default: ~/.cache/reformer_retrieval/minilm)")
    p.add_argument("--minilm-batch-size", type=int, default=32, help="MiniLM chunks per forward pass")
    p.add_argument("--vector-cache", default=str(DEFAULT_CACHE_ROOT / "models"),
                   help="folder caching the model's vectors by text hash (shared with model_quality.py)")
    p.add_argument("--no-vector-cache", action="store_true", help="encode every text now, cache nothing")
    p.add_argument("--sweep-table", action="store_true", help="print every sweep")
    p.add_argument("--json", default=None, help="write the rows (and sweeps) as JSON")
    args = p.parse_args(argv)

    from reformer_retrieval.dedup import DEFAULT_MINHASH_THRESHOLD, default_threshold
    from reformer_retrieval.evaluate import format_sweep

    if args.labelled and args.data and args.labelled != args.data:
        p.error(f"two labelled files: {args.labelled} and --data {args.data}")
    args.labelled = str(args.data or args.labelled or DEFAULT_DATA)
    if not Path(args.labelled).is_file():
        print(f"no labelled data at {args.labelled} (pass --data)", file=sys.stderr)
        return 2
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(methods) - set(ALL_METHODS)
    if unknown:
        p.error(f"unknown method(s) {sorted(unknown)}")
    from minilm_baseline import DEFAULT_CACHE, format_stats, minilm_available, minilm_chunk_mean_with_stats

    minilm_missing = minilm_available()
    use_minilm = "minilm" in methods and (args.minilm if args.minilm is not None else minilm_missing is None)
    if use_minilm and minilm_missing:
        print(f"--minilm: {minilm_missing}", file=sys.stderr)
        return 2
    if "minilm" in methods and not use_minilm:
        why = "--no-minilm" if args.minilm is False else minilm_missing
        print(f"note: the MiniLM chunk-mean baseline row is skipped ({why})", file=sys.stderr)
        methods.remove("minilm")
    if args.noise and args.embeddings:
        p.error("--embeddings are of the clean texts; drop them with --noise")
    ids, texts, labels = load(args.labelled, args.id_column, args.text_column, args.label_column, args.noise,
                              args.noise_strength, args.seed, args.limit, args.max_clusters, args.subset_seed)
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
    channels: dict[str, tuple[slice, float]] = {}
    if {"embedding", "hybrid"} & set(methods):
        vectors, encode_s, model_id, channels = encode(ids, texts, args.model, args.device, args.embeddings,
                                                       None if args.no_vector_cache else args.vector_cache)
    n_chars = sum(len(t) for t in texts)
    model_speed = n_chars / encode_s if encode_s > 0 else None
    mt = args.minhash_threshold
    if mt is None:
        mt = max(sweeps["minhash"], key=lambda r: r.f1).threshold if "minhash" in sweeps else DEFAULT_MINHASH_THRESHOLD
    for method in ("embedding", "hybrid"):
        if method in methods:
            sweeps[method], results[method] = sweep_ours(method, ids, texts, labels, vectors, cgrid, mt, args.index,
                                                         args.shingle, args.ngram)
            results[method]["encode_s"] = encode_s
            results[method]["chars_per_s"] = model_speed
    channel_methods: list[str] = []
    if "embedding" in methods and args.channel_rows and len(channels) > 1:
        for part, sub in channel_views(np.asarray(vectors, dtype=np.float32), channels):
            key = f"embedding:{part}"
            sweeps[key], results[key] = sweep_ours("embedding", ids, texts, labels, sub,
                                                   cgrid, mt, args.index, args.shingle, args.ngram)
            results[key].update(encode_s=encode_s, chars_per_s_at_least=model_speed)
            channel_methods.append(key)
    minilm_stats = None
    if use_minilm:
        minilm_vectors, stats = minilm_chunk_mean_with_stats(
            texts, batch_size=args.minilm_batch_size,
            cache=args.minilm_cache if args.minilm_cache is not None else DEFAULT_CACHE, show_progress=True,
        )
        print(format_stats(stats), file=sys.stderr)
        minilm_stats = asdict(stats)
        sweeps["minilm"], results["minilm"] = sweep_ours("embedding", ids, texts, labels, minilm_vectors, cgrid, mt,
                                                         args.index, args.shingle, args.ngram)
        results["minilm"].update(encode_s=n_chars / stats.chars_per_s if stats.chars_per_s else stats.seconds,
                                 chars_per_s=stats.chars_per_s)
    for method in ("datasketch", "minhash"):
        if method in results:
            results[method]["chars_per_s"] = n_chars / results[method]["seconds"]

    anchor = results.get("datasketch", {}).get("seconds")
    # the hybrid's cosine edge has its own default (training.json "hybrid_dedup_threshold")
    defaults = {"minhash": DEFAULT_MINHASH_THRESHOLD, "datasketch": None,
                "embedding": default_threshold("embedding", args.model),
                "hybrid": default_threshold("hybrid", args.model), "minilm": None}
    defaults.update({key: None for key in channel_methods})
    order = ["datasketch", "minhash", "embedding", *channel_methods, "hybrid", "minilm"]
    rows, table_rows = [], []
    for method in [m for m in order if m in sweeps]:
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
            "chars_per_s": info.get("chars_per_s"), "chars_per_s_at_least": info.get("chars_per_s_at_least"),
            "time_vs_datasketch": info["seconds"] / anchor if anchor else None,
            "stage_seconds": {k: v for k, v in info.items() if k.endswith("_s")},
            "noise": args.noise, "documents": len(ids), "chars": n_chars,
            "model_id": "all-MiniLM-L6-v2" if method == "minilm" else model_id if info.get("encode_s") is not None
            else None,
            "minilm": minilm_stats if method == "minilm" else None,
        }
        rows.append(row)
        label = {"datasketch": "datasketch MinHashLSH (anchor)",
                 "minhash": f"ours: MinHash ({args.shingle} {args.ngram}-grams) + exact Jaccard",
                 "embedding": "ours: embedding (cosine)", "hybrid": f"ours: hybrid (Jaccard >= {mt:g} or cosine)",
                 "minilm": "MiniLM-L6 chunk-mean, 1,000 chars (cosine)",
                 **{key: f"ours: embedding, {key.split(':', 1)[1]} channel only (cosine)" for key in channel_methods}}
        if info.get("chars_per_s_at_least") is not None:
            speed = f">= {info['chars_per_s_at_least']:,.0f}"
        else:
            speed = "–" if info.get("chars_per_s") is None else f"{info['chars_per_s']:,.0f}"
        table_rows.append([
            label[method], f"{best.threshold:g}", f"{best.ari:.4f}", f"{best.precision:.4f}", f"{best.recall:.4f}",
            f"{best.f1:.4f}", f"{best_ari.threshold:g} ({best_ari.ari:.4f})", f"{info['seconds']:.2f}",
            f"{info['encode_s']:.1f}" if info.get("encode_s") is not None else "–", speed,
            fmt_ratio(info["seconds"], anchor) if anchor else "–",
        ])
    print(markdown_table(
        ["method", "best-F1 threshold", "ARI", "precision", "recall", "F1", "best-ARI threshold (ARI)",
         "dedup s", "encode s", "chars/s", "time / datasketch"], table_rows, align="lrrrrrrrrrr"))
    import torch

    print(f"chars/s on {torch.get_num_threads()} torch threads: encoding for the embeddings (a channel row reuses the "
          "model's vectors: at least its speed), text -> clusters for the MinHash methods", file=sys.stderr)
    if minilm_stats and minilm_stats["chars_per_s_from_cache"]:
        print(f"MiniLM vectors from the cache {minilm_stats['cache']}; chars/s is the cache's record", file=sys.stderr)
    if args.sweep_table:
        for method, sweep in sweeps.items():
            print(f"\n{method}:\n{format_sweep(sweep, mark=defaults.get(method))}")
    if args.json:
        write_json(args.json, {"rows": rows, "sweeps": {k: [m.to_dict() for m in v] for k, v in sweeps.items()}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
