"""Model quality: pair ROC-AUC and best pairwise F1 of a model's cosine similarities vs MinHash vs random init.

On a labelled Parquet (``id``, ``text``, ``cluster``; pairs in one cluster are near-duplicates), every pair of
documents in the file (or in the ``--max-clusters`` subset) is scored by

* the model's cosine similarity (``--model``, default: the bundled default model),
* the same architecture, randomly initialised (seed ``--random-seed``, same tokenizer),
* MinHash, the anchor: datasketch ``MinHash(num_perm=128, seed=1)`` over word 3-grams (lower-cased ``\\w+``
  tokens), similarity = datasketch's Jaccard estimate (share of equal hash values),
* the baseline a user would pick instead (``--minilm``, on by default when the ``bench`` extra is installed):
  all-MiniLM-L6-v2 over consecutive 1,000-character chunks, mean of the chunk vectors
  (``benchmarks/minilm_baseline.py``; its vectors are cached in ``--minilm-cache``, so reruns are free),

twice: on the clean texts and on an OCR-noised copy made with ``augment(text, strength, seed=(noise_seed,
row), preset="ocr")`` (each document noised independently). The table gives ROC-AUC and the best F1 over all
thresholds (and, when the file has a ``family`` column, the same two scores over the pairs inside one family
only: positives against hard negatives), each method's ratio to MinHash on the same data, and its speed in characters per second on this
CPU (encoding only for the models; MinHash: sketches plus all-pairs similarity). For a model with the hashed n-gram channel
(``ngram_size``), two more rows score each channel of the same embeddings alone (an ablation; no extra encoding;
their speed is shown as ">= the model's", since encoding one channel costs at most what both cost).

Examples::

    # full dev set on a GPU (about a minute with the default model)
    python benchmarks/model_quality.py --model reformer_retrieval/assets/default --device cuda --json q.json
    # a few minutes on 2 CPU cores: 12 clusters, texts cut to 3,000 characters
    python benchmarks/model_quality.py --max-clusters 12 --max-chars 3000
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, write_json
from vector_cache import DEFAULT_CACHE_ROOT, encode_cached, encoder_cache

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / ".." / "shared" / "data" / "dev" / "wiki_versions" / "corpus.parquet"
_WORDS = re.compile(r"\w+")

__all__ = ["channel_views", "cluster_subset", "family_metrics", "labelled_table", "load_labelled", "main",
           "minhash_similarity", "noisy_copy", "shingles", "write_noisy_copy"]


def cluster_subset(clusters: np.ndarray, max_clusters: int, seed: int) -> np.ndarray:
    """Rows (in file order) of a seeded subset of ``max_clusters`` whole clusters of the labels ``clusters``
    (every row when ``max_clusters`` is 0); dedup_quality.py takes the same subset."""
    if not max_clusters:
        return np.arange(len(clusters))
    chosen = np.random.default_rng(seed).permutation(np.unique(clusters))[:max_clusters]
    return np.flatnonzero(np.isin(clusters, chosen))


def load_labelled(path: Path, max_clusters: int, max_chars: int, seed: int) -> dict[str, Any]:
    """Rows of a labelled Parquet file, optionally a seeded subset of whole clusters, texts cut to max_chars."""
    import pyarrow.parquet as pq

    has_family = "family" in pq.read_schema(path).names
    table = pq.read_table(path, columns=["id", "text", "cluster", *(["family"] if has_family else [])])
    ids = [str(x) for x in table.column("id").to_pylist()]
    texts = table.column("text").to_pylist()
    clusters = np.asarray([str(c) for c in table.column("cluster").to_pylist()])
    rows = cluster_subset(clusters, max_clusters, seed)
    cut = sum(1 for r in rows if max_chars and len(texts[r]) > max_chars)
    return {
        "rows": rows,
        "ids": [ids[r] for r in rows],
        "texts": [texts[r][:max_chars] if max_chars else texts[r] for r in rows],
        "clusters": clusters[rows],
        "families": np.asarray([str(f) for f in table.column("family").to_pylist()])[rows] if has_family else None,
        "n_cut": cut,
    }


def family_metrics(similarity: np.ndarray, clusters: np.ndarray, families: np.ndarray) -> dict[str, float]:
    """ROC-AUC and best F1 over the pairs *within* one family only: the positives against the hard negatives
    (same family, other cluster), the pairs that the all-pairs scores drown in easy negatives."""
    from sklearn.metrics import precision_recall_curve, roc_auc_score

    iu = np.triu_indices(len(clusters), k=1)
    same_family = families[iu[0]] == families[iu[1]]
    scores = np.asarray(similarity, dtype=np.float64)[iu][same_family]
    truth = (clusters[iu[0]] == clusters[iu[1]])[same_family]
    if truth.all() or not truth.any():
        raise ValueError("family metrics need positive and hard-negative pairs inside the families")
    precision, recall, thresholds = precision_recall_curve(truth, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    best = int(np.argmax(f1[:-1]))
    return {"family_auc": float(roc_auc_score(truth, scores)), "family_best_f1": float(f1[best]),
            "family_best_threshold": float(thresholds[best]), "n_hard_negatives": int((~truth).sum())}


def shingles(text: str, n: int = 3) -> list[bytes]:
    """Word n-grams of the lower-cased ``\\w+`` tokens (one shingle of all tokens if fewer than n)."""
    tokens = _WORDS.findall(text.lower())
    if len(tokens) < n:
        return [" ".join(tokens).encode("utf-8")]
    return [" ".join(tokens[i : i + n]).encode("utf-8") for i in range(len(tokens) - n + 1)]


def minhash_similarity(texts: list[str], num_perm: int = 128) -> tuple[np.ndarray, list[Any]]:
    """All-pairs datasketch Jaccard estimates (n, n) of word-3-gram MinHashes, and the MinHash objects."""
    from datasketch import MinHash

    sketches = []
    for text in texts:
        m = MinHash(num_perm=num_perm, seed=1)
        m.update_batch(shingles(text))
        sketches.append(m)
    hv = np.stack([m.hashvalues for m in sketches])
    sim = np.zeros((len(texts), len(texts)), dtype=np.float32)
    block = 64
    for start in range(0, len(texts), block):
        sim[start : start + block] = (hv[start : start + block, None, :] == hv[None, :, :]).mean(axis=-1)
    return sim, sketches


def _exact_jaccard(a: str, b: str) -> float:
    x, y = set(shingles(a)), set(shingles(b))
    return len(x & y) / max(1, len(x | y))


def _random_encoder(model_dir: Path | None, seed: int, device: str, batch_tokens: int | None) -> Any:
    import torch

    from reformer_retrieval.checkpoint import load_model, load_tokenizer
    from reformer_retrieval.encode import DEFAULT_MODEL_DIR, Encoder
    from reformer_retrieval.model.encoder import ReformerEncoder

    directory = DEFAULT_MODEL_DIR if model_dir is None else model_dir
    config = load_model(directory).config
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ReformerEncoder(config)
    return Encoder(model, load_tokenizer(directory), device=device, batch_tokens=batch_tokens)


def channel_views(emb: np.ndarray, channels: dict[str, tuple[Any, Any]]) -> list[tuple[str, np.ndarray]]:
    """``(name, vectors)`` of each channel of embeddings ``emb`` alone: its columns (``model.channels()``),
    rows renormalised to unit length. Empty for a one-channel model (its only view is ``emb`` itself)."""
    views = []
    for name, (columns, _) in channels.items() if len(channels) > 1 else ():
        sub = emb[:, columns]
        views.append((name, sub / np.maximum(np.linalg.norm(sub, axis=1, keepdims=True), 1e-12)))
    return views


def noisy_copy(texts: list[str], rows: Any, strength: float, seed: int, preset: str) -> list[str]:
    """The noised copy of ``texts``: ``augment(text, strength, seed=(seed, row), preset=preset)``, ``row`` each
    text's row in the full labelled file (so a subset is noised as the whole file would be)."""
    from reformer_retrieval.train.augment import augment

    return [augment(t, strength, seed=(seed, int(r)), preset=preset) for t, r in zip(texts, rows)]


def labelled_table(ids: list[str], texts: list[str], clusters: Any) -> Any:
    """The ``(id, text, cluster)`` pyarrow table of labelled rows (clusters as strings)."""
    import pyarrow as pa

    return pa.table({"id": pa.array(ids, pa.string()), "text": pa.array(texts, pa.string()),
                     "cluster": pa.array([str(c) for c in clusters], pa.string())})


def write_noisy_copy(path: Path, ids: list[str], texts: list[str], clusters: np.ndarray) -> None:
    """Write ``(id, text, cluster)`` rows to a Parquet file atomically (temp file + rename)."""
    import pyarrow.parquet as pq

    from reformer_retrieval.atomic import atomic_path

    table = labelled_table(ids, texts, clusters)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, ".parquet") as tmp:
        pq.write_table(table, tmp)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="labelled Parquet (id, text, cluster)")
    parser.add_argument("--model", type=Path, default=None, help="model directory (default: the bundled model)")
    parser.add_argument("--max-clusters", type=int, default=0, help="seeded subset of whole clusters (0 = all)")
    parser.add_argument("--max-chars", type=int, default=0, help="cut every text to this many characters (0 = no cut)")
    parser.add_argument("--noise-preset", default="ocr", help="augmentation preset of the noisy copy")
    parser.add_argument("--noise-strength", type=float, default=0.5, help="strength of the noisy copy")
    parser.add_argument("--noise-seed", type=int, default=0, help="seed of the noisy copy")
    parser.add_argument("--random-seed", type=int, default=1, help="seed of the randomly initialised encoder")
    parser.add_argument("--seed", type=int, default=0, help="seed of the cluster subset")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda")
    parser.add_argument("--batch-tokens", type=int, default=None, help="padded tokens per forward pass")
    parser.add_argument("--skip-random", action="store_true", help="leave out the random-init encoder")
    parser.add_argument(
        "--minilm", action=argparse.BooleanOptionalAction, default=None,
        help="the all-MiniLM-L6-v2 1,000-char chunk-mean row (default: on when the bench extra is installed)",
    )
    parser.add_argument("--minilm-cache", type=Path, default=None,
                        help="folder of the MiniLM vector cache (default: ~/.cache/reformer_retrieval/minilm)")
    parser.add_argument("--minilm-batch-size", type=int, default=32, help="MiniLM chunks per forward pass")
    parser.add_argument(
        "--vector-cache", type=Path, default=DEFAULT_CACHE_ROOT / "models",
        help="folder caching the models' vectors by text hash (shared with dedup_quality.py; "
        "default ~/.cache/reformer_retrieval/models); speeds then come from the cache's record",
    )
    parser.add_argument("--no-vector-cache", action="store_true", help="encode every text now, cache nothing")
    parser.add_argument("--json", type=Path, default=None, help="write the rows here")
    parser.add_argument(
        "--write-noisy", type=Path, default=None, metavar="FILE",
        help="write the noisy copy (id, text, cluster) to this Parquet file and stop (to encode it elsewhere)",
    )
    args = parser.parse_args(argv)

    if not args.data.is_file():
        print(f"no labelled data at {args.data} (pass --data)", file=sys.stderr)
        return 2
    from reformer_retrieval.encode import Encoder
    from reformer_retrieval.train import pair_metrics

    data = load_labelled(args.data, args.max_clusters, args.max_chars, args.seed)
    clean = data["texts"]
    noisy = noisy_copy(clean, data["rows"], args.noise_strength, args.noise_seed, args.noise_preset)
    if args.write_noisy is not None:
        write_noisy_copy(args.write_noisy, data["ids"], noisy, data["clusters"])
        print(f"wrote the noisy copy of {len(noisy)} documents to {args.write_noisy}")
        return 0
    sample = range(0, len(clean), max(1, len(clean) // 50))
    self_jaccard = float(np.mean([_exact_jaccard(clean[i], noisy[i]) for i in sample]))
    n_clusters = len(np.unique(data["clusters"]))
    print(
        f"{args.data}: {len(clean)} documents in {n_clusters} clusters ({data['n_cut']} cut to {args.max_chars} chars); "
        f"noisy copy: preset {args.noise_preset!r}, strength {args.noise_strength}, seed {args.noise_seed}; "
        f"word-3-gram Jaccard of a document and its noisy copy: {self_jaccard:.3f} (mean of {len(sample)})"
    )

    from minilm_baseline import DEFAULT_CACHE, format_stats, minilm_available, minilm_chunk_mean_with_stats

    minilm_missing = minilm_available()
    use_minilm = args.minilm if args.minilm is not None else minilm_missing is None
    if use_minilm and minilm_missing:
        print(f"--minilm: {minilm_missing}", file=sys.stderr)
        return 2
    if not use_minilm:
        why = "--no-minilm" if args.minilm is False else minilm_missing
        print(f"note: the MiniLM chunk-mean baseline row is skipped ({why})", file=sys.stderr)
    minilm_cache = args.minilm_cache if args.minilm_cache is not None else DEFAULT_CACHE

    trained = Encoder.load(args.model, device=args.device, batch_tokens=args.batch_tokens)
    methods: list[tuple[str, Any]] = [("model", trained)]
    if not args.skip_random:
        methods.append(("random init", _random_encoder(args.model, args.random_seed, args.device, args.batch_tokens)))
    rows: list[dict[str, Any]] = []
    minilm_stats: dict[str, Any] = {}
    for condition, texts in (("clean", clean), ("noisy", noisy)):
        n_chars = sum(len(t) for t in texts)
        t = time.perf_counter()
        sim, sketches = minhash_similarity(texts)
        for i, j in [(0, 1), (0, len(texts) - 1), (len(texts) // 2, len(texts) // 3)]:  # vectorised == datasketch
            assert abs(sim[i, j] - sketches[i].jaccard(sketches[j])) < 1e-6
        seconds = time.perf_counter() - t
        # (name, similarity, seconds, model_id, chars/s, chars/s is a lower bound)
        results = [("MinHash (word 3-grams, 128 perm)", sim, seconds, None, n_chars / seconds, False)]
        for name, encoder in methods:
            store = None if args.no_vector_cache else encoder_cache(encoder, args.vector_cache)
            emb, info = encode_cached(encoder.encode, texts, store)
            speed = info["chars_per_s"]  # partly or wholly cached: seconds = all texts at the measured speed
            seconds = n_chars / speed if speed else info["seconds"]
            if info["chars_per_s_from_cache"]:
                print(f"{condition}: {name} vectors from the cache {store.npy}; chars/s is its record", file=sys.stderr)
            results.append((f"{name} ({encoder.model_id})", emb @ emb.T, seconds, encoder.model_id, speed, False))
            for part, sub in channel_views(emb, encoder.model.channels()):  # ablation: each channel alone
                results.append((f"{name}: {part} channel only", sub @ sub.T, 0.0, encoder.model_id, speed, True))
        if use_minilm:
            emb, stats = minilm_chunk_mean_with_stats(
                texts, batch_size=args.minilm_batch_size, cache=minilm_cache, show_progress=True
            )
            print(f"{condition}: {format_stats(stats)}", file=sys.stderr)
            minilm_stats[condition] = asdict(stats)
            seconds = n_chars / stats.chars_per_s if stats.chars_per_s else stats.seconds
            results.append(("MiniLM-L6 chunk-mean (1,000 chars)", emb @ emb.T, seconds, "all-MiniLM-L6-v2",
                            stats.chars_per_s, False))
        base = None
        for name, similarity, seconds, model_id, speed, lower_bound in results:
            m = pair_metrics(similarity, data["clusters"])
            fam = family_metrics(similarity, data["clusters"], data["families"]) if data["families"] is not None else {}
            base = base or m
            rows.append({**fam,
                "data": condition, "method": name, "model_id": model_id, "roc_auc": m["roc_auc"],
                "best_f1": m["best_f1"], "best_threshold": m["best_threshold"], "seconds": round(seconds, 2),
                "chars_per_s": None if lower_bound or speed is None else round(speed, 1),
                "chars_per_s_at_least": round(speed, 1) if lower_bound and speed is not None else None,
                "auc_vs_minhash": m["roc_auc"] / base["roc_auc"], "f1_vs_minhash": m["best_f1"] / base["best_f1"],
                "n_docs": len(texts), "n_chars": n_chars, "n_pairs": m["n_pairs"], "n_positive_pairs": m["n_positive"],
            })

    def speed_cell(r: dict[str, Any]) -> str:
        if r["chars_per_s_at_least"] is not None:
            return f">= {r['chars_per_s_at_least']:,.0f}"
        return "–" if r["chars_per_s"] is None else f"{r['chars_per_s']:,.0f}"

    has_family = data["families"] is not None
    table = markdown_table(
        ["data", "method", "ROC-AUC", "best F1", "at threshold", "AUC / MinHash", "F1 / MinHash", "seconds",
         "chars/s", *(["in-family AUC", "in-family best F1"] if has_family else [])],
        [
            [r["data"], r["method"], f"{r['roc_auc']:.4f}", f"{r['best_f1']:.4f}", f"{r['best_threshold']:.3f}",
             f"{r['auc_vs_minhash']:.3f}x", f"{r['f1_vs_minhash']:.3f}x",
             f"{r['seconds']:.1f}", speed_cell(r),
             *([f"{r['family_auc']:.4f}", f"{r['family_best_f1']:.4f}"] if has_family else [])]
            for r in rows
        ],
        align="llrrrrrrr" + "rr" * has_family,
    )
    print(table)
    print(f"{len(clean)} documents, {rows[0]['n_pairs']:,} pairs ({rows[0]['n_positive_pairs']:,} positive) per condition")
    if has_family:
        print(f"in-family: the {rows[0]['n_positive_pairs']:,} positive pairs against the {rows[0]['n_hard_negatives']:,} "
              "hard negatives (same family, other cluster) only")
    import torch

    print(f"chars/s on {torch.get_num_threads()} torch threads; channel rows reuse the model's vectors (>= its speed)")
    for condition, st in minilm_stats.items():
        if st["chars_per_s_from_cache"]:
            print(f"{condition}: MiniLM vectors from the cache {st['cache']}; chars/s is the cache's record")
    if args.json is not None:
        meta = {"data": str(args.data), "n_docs": len(clean), "n_clusters": int(n_clusters),
                "max_clusters": args.max_clusters, "max_chars": args.max_chars, "noise_preset": args.noise_preset,
                "noise_strength": args.noise_strength, "noise_seed": args.noise_seed,
                "noisy_self_jaccard": self_jaccard, "minilm": minilm_stats or None}
        write_json(args.json, {"meta": meta, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
