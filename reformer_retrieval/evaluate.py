"""Metrics for near-duplicate clusters and for search results.

Dedup (against a ``cluster`` label column): adjusted Rand index (scikit-learn), pairwise precision /
recall / F1 over same-cluster pairs, and a threshold sweep that re-clusters the verified candidate
pairs at every threshold (incrementally: one union-find pass from the highest score down).

Search (against qrels ``query_id, doc_id, relevance``): recall@k, MRR and nDCG@10 (scikit-learn's
``ndcg_score``, linear gains, log2 discount), optionally excluding each query's own document.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import adjusted_rand_score, ndcg_score

__all__ = [
    "DedupMetrics",
    "dedup_metrics",
    "evaluate_clusters",
    "format_sweep",
    "labels_to_codes",
    "plot_pr_curve",
    "read_labels",
    "read_qrels",
    "search_metrics",
    "sweep_dedup",
    "threshold_sweep",
]


@dataclass
class DedupMetrics:
    """Clustering quality against labels; pairs are unordered same-cluster document pairs."""

    ari: float
    precision: float
    recall: float
    f1: float
    n_docs: int
    predicted_pairs: int
    true_pairs: int
    correct_pairs: int
    n_clusters: int
    threshold: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for JSON)."""
        return asdict(self)


def labels_to_codes(labels: Sequence[Any]) -> np.ndarray:
    """Integer codes (0..k-1, in order of first appearance) of arbitrary hashable labels."""
    mapping: dict[Any, int] = {}
    return np.fromiter((mapping.setdefault(v, len(mapping)) for v in labels), dtype=np.int64, count=len(labels))


def _comb2(x: np.ndarray | int) -> Any:
    return x * (x - 1) // 2


def _ari_from_pairs(tp: int, pred_pairs: int, true_pairs: int, n: int) -> float:
    """Adjusted Rand index from pair counts (Hubert & Arabie), as scikit-learn computes it."""
    total = _comb2(n)
    if total == 0:
        return 1.0
    expected = pred_pairs * true_pairs / total
    maximum = (pred_pairs + true_pairs) / 2
    if maximum == expected:
        return 1.0
    return float((tp - expected) / (maximum - expected))


def _prf(tp: int, pred_pairs: int, true_pairs: int) -> tuple[float, float, float]:
    precision = tp / pred_pairs if pred_pairs else 1.0
    recall = tp / true_pairs if true_pairs else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return float(precision), float(recall), float(f1)


def dedup_metrics(predicted: Sequence[Any], truth: Sequence[Any]) -> DedupMetrics:
    """ARI and pairwise precision / recall / F1 of ``predicted`` cluster labels against ``truth``.

    Both are per-document labels in the same order. Precision with no predicted pair, and recall with
    no true pair, are 1 (nothing claimed wrongly / nothing to find).
    """
    if len(predicted) != len(truth):
        raise ValueError(f"{len(predicted)} predicted labels but {len(truth)} true labels")
    p = labels_to_codes(predicted)
    t = labels_to_codes(truth)
    n = len(p)
    if n == 0:
        raise ValueError("no documents to evaluate")
    joint = p * (int(t.max()) + 1) + t
    tp = int(_comb2(np.unique(joint, return_counts=True)[1]).sum())
    pred_pairs = int(_comb2(np.bincount(p)).sum())
    true_pairs = int(_comb2(np.bincount(t)).sum())
    precision, recall, f1 = _prf(tp, pred_pairs, true_pairs)
    ari = float(adjusted_rand_score(t, p))
    return DedupMetrics(ari, precision, recall, f1, n, pred_pairs, true_pairs, tp, int(p.max()) + 1)


def threshold_sweep(
    n_docs: int,
    rows_a: np.ndarray,
    rows_b: np.ndarray,
    scores: np.ndarray,
    truth: Sequence[Any],
    thresholds: Iterable[float],
) -> list[DedupMetrics]:
    """Metrics of the clusters formed by the pairs with ``score >= t``, for every ``t`` in ``thresholds``.

    ``rows_a``, ``rows_b`` index documents 0..n_docs-1 (in the order of ``truth``). One union-find
    pass merges pairs from the highest score down, updating the pair counts incrementally, so a sweep
    costs about as much as one clustering.
    """
    t = labels_to_codes(truth)
    if len(t) != n_docs:
        raise ValueError(f"{len(t)} labels for {n_docs} documents")
    rows_a = np.asarray(rows_a, dtype=np.int64)
    rows_b = np.asarray(rows_b, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    parent = list(range(n_docs))
    members: list[Counter[int] | None] = [Counter({int(t[i]): 1}) for i in range(n_docs)]
    size = [1] * n_docs
    true_pairs = int(_comb2(np.bincount(t)).sum())
    tp = pred_pairs = 0
    n_clusters = n_docs

    def find(x: int) -> int:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    out = []
    pos = 0
    for thr in sorted(set(float(x) for x in thresholds), reverse=True):
        while pos < len(order) and scores[order[pos]] >= thr:
            i = order[pos]
            ra, rb = find(int(rows_a[i])), find(int(rows_b[i]))
            pos += 1
            if ra == rb:
                continue
            if size[ra] < size[rb]:
                ra, rb = rb, ra
            ca, cb = members[ra], members[rb]
            assert ca is not None and cb is not None
            tp += sum(cnt * ca.get(label, 0) for label, cnt in cb.items())
            pred_pairs += size[ra] * size[rb]
            ca.update(cb)
            members[rb] = None
            parent[rb] = ra
            size[ra] += size[rb]
            n_clusters -= 1
        precision, recall, f1 = _prf(tp, pred_pairs, true_pairs)
        out.append(DedupMetrics(_ari_from_pairs(tp, pred_pairs, true_pairs, n_docs), precision, recall, f1,
                                n_docs, pred_pairs, true_pairs, tp, n_clusters, thr))
    return sorted(out, key=lambda m: m.threshold if m.threshold is not None else 0.0)


def plot_pr_curve(sweeps: Mapping[str, Sequence[DedupMetrics]], path: str | Path, title: str = "") -> Path:
    """Save a pairwise precision-recall curve (one line per method) as an image (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("plotting needs matplotlib: pip install 'reformer-retrieval[plot]'") from exc
    from reformer_retrieval.atomic import atomic_path

    path = Path(path)
    fig, ax = plt.subplots(figsize=(6, 5))
    for name, rows in sweeps.items():
        rows = sorted(rows, key=lambda m: m.threshold or 0.0)
        ax.plot([m.recall for m in rows], [m.precision for m in rows], marker=".", label=name)
        best = max(rows, key=lambda m: m.f1)
        ax.annotate(f"t={best.threshold:.2f}", (best.recall, best.precision), fontsize=8)
    ax.set_xlabel("pairwise recall")
    ax.set_ylabel("pairwise precision")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend()
    ax.set_title(title or "near-duplicate pairs: precision vs recall over thresholds")
    with atomic_path(path, suffix=path.suffix) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path


def search_metrics(
    results: Mapping[Any, Sequence[Any]],
    qrels: Mapping[Any, Mapping[Any, float]],
    ks: Sequence[int] = (1, 10, 100),
    exclude: Mapping[Any, Any] | None = None,
    ndcg_k: int = 10,
) -> dict[str, Any]:
    """recall@k, MRR and nDCG@``ndcg_k`` averaged over the queries that have relevant documents.

    Args:
        results: query id -> ranked doc ids (best first).
        qrels: query id -> {doc id: relevance}; relevance <= 0 is not relevant.
        ks: Cut-offs for recall.
        exclude: query id -> doc id removed from that query's results and qrels (its own document).
        ndcg_k: Cut-off of nDCG.

    Returns:
        ``{"recall@k": ..., "mrr": ..., "ndcg@10": ..., "queries": n, "queries_without_relevant": m,
        "queries_without_results": r}``. A query in qrels but not in ``results`` counts with an empty list.
    """
    exclude = exclude or {}
    recalls: dict[int, list[float]] = {k: [] for k in ks}
    rr, ndcgs = [], []
    skipped = no_results = 0
    for qid, judged in qrels.items():
        own = exclude.get(qid)
        rel = {d: float(r) for d, r in judged.items() if r > 0 and d != own}
        if not rel:
            skipped += 1
            continue
        ranked = [d for d in results.get(qid, []) if d != own]
        if qid not in results:
            no_results += 1
        for k in ks:
            recalls[k].append(sum(1 for d in ranked[:k] if d in rel) / len(rel))
        first = next((i for i, d in enumerate(ranked) if d in rel), None)
        rr.append(0.0 if first is None else 1.0 / (first + 1))
        ndcgs.append(_ndcg(ranked, rel, ndcg_k))
    out: dict[str, Any] = {f"recall@{k}": float(np.mean(v)) if v else math.nan for k, v in recalls.items()}
    out["mrr"] = float(np.mean(rr)) if rr else math.nan
    out[f"ndcg@{ndcg_k}"] = float(np.mean(ndcgs)) if ndcgs else math.nan
    out["queries"] = len(rr)
    out["queries_without_relevant"] = skipped
    out["queries_without_results"] = no_results
    return out


def _ndcg(ranked: Sequence[Any], rel: Mapping[Any, float], k: int) -> float:
    """nDCG@k of one ranked list via scikit-learn, with unretrieved relevant documents scored 0.

    The scored list is the ranked documents, then ``k`` irrelevant fillers, then the relevant
    documents that were not retrieved: the fillers keep the latter out of the top k (no credit), but
    they still count in the ideal ranking.
    """
    seen = set(ranked)
    missing = [d for d in rel if d not in seen]
    y_true = [rel.get(d, 0.0) for d in ranked] + [0.0] * k + [rel[d] for d in missing]
    y_score = list(range(len(y_true), 0, -1))
    if len(y_true) < 2:  # scikit-learn needs at least two documents
        y_true.append(0.0)
        y_score.append(0)
    return float(ndcg_score(np.asarray([y_true]), np.asarray([y_score], dtype=np.float64), k=k))


# --------------------------------------------------------------------------------------------- file-level runs
def read_labels(path: str | Path, id_column: str = "id", label_column: str = "cluster") -> dict[Any, Any]:
    """id -> cluster label from a labelled corpus (Parquet, JSON Lines or CSV; a file, directory or glob;
    dotted names reach nested fields). Null labels and repeated ids are refused, naming the id."""
    from reformer_retrieval.corpus_formats import CorpusError, iter_record_batches

    out: dict[Any, Any] = {}
    try:
        for file, _, batch in iter_record_batches(path, {"id": id_column, "label": label_column}, batch_size=65536):
            for doc_id, label in zip(batch.column("id").to_pylist(), batch.column("label").to_pylist()):
                if label is None:
                    raise ValueError(f"{file}: id {doc_id!r} has a null {label_column!r}")
                if doc_id in out:
                    raise ValueError(f"{file}: id {doc_id!r} appears twice")
                out[doc_id] = label
    except CorpusError as exc:
        raise ValueError(str(exc)) from None
    return out


def evaluate_clusters(
    clusters_path: str | Path, labels: Mapping[Any, Any], id_column: str = "id", cluster_column: str = "cluster_id"
) -> DedupMetrics:
    """Metrics of a ``clusters.parquet`` against ``labels`` (ids missing from either side are refused)."""
    import pyarrow.parquet as pq

    table = pq.read_table(clusters_path, columns=[id_column, cluster_column])
    predicted = dict(zip(table.column(id_column).to_pylist(), table.column(cluster_column).to_pylist()))
    missing = [d for d in labels if d not in predicted]
    if missing:
        raise ValueError(f"{clusters_path} lacks {len(missing)} labelled ids (e.g. {missing[0]!r})")
    extra = [d for d in predicted if d not in labels]
    if extra:
        raise ValueError(f"{clusters_path} holds {len(extra)} ids without a label (e.g. {extra[0]!r})")
    ids = list(labels)
    return dedup_metrics([predicted[d] for d in ids], [labels[d] for d in ids])


def sweep_dedup(
    ids: Sequence[Any],
    truth: Sequence[Any],
    thresholds: Sequence[float],
    method: str = "embedding",
    vectors: np.ndarray | None = None,
    texts: Sequence[str] | None = None,
    minhash_threshold: float | None = None,
    **kwargs: Any,
) -> tuple[list[DedupMetrics], Any]:
    """Dedup once at the lowest threshold, then score every threshold of ``thresholds``.

    The threshold swept is the cosine for ``embedding`` and ``hybrid`` (the Jaccard side of hybrid
    stays at ``minhash_threshold``): candidates found at the lowest threshold include those of every
    higher one, so one run and an incremental sweep give exactly the clusters of separate runs. For
    ``minhash`` the LSH banding itself depends on the threshold, so each threshold gets its own run
    (the shingles and MinHash signatures are computed once). Returns the metrics (by increasing
    threshold) and the `DedupResult` of the lowest threshold. ``kwargs`` go to
    `reformer_retrieval.dedup.find_duplicates`.
    """
    from reformer_retrieval.dedup import DEFAULT_MINHASH_THRESHOLD, find_duplicates

    thresholds = sorted(set(float(t) for t in thresholds))
    if not thresholds:
        raise ValueError("no thresholds to sweep")
    low = thresholds[0]
    if method == "minhash" and len(thresholds) > 1:
        # the LSH banding depends on the threshold: one real run per threshold (shingles and signatures
        # computed once)
        from reformer_retrieval.dedup import minhash_inputs

        if texts is None:
            raise ValueError("method 'minhash' needs the texts")
        settings = {key: kwargs[key] for key in ("num_perm", "shingle", "ngram", "seed") if key in kwargs}
        sets, sigs = minhash_inputs(texts, **settings)
        rows, first = [], None
        for t in thresholds:
            res = find_duplicates(ids, texts=texts, method="minhash", threshold=t, shingle_sets=sets,
                                  signatures=sigs, **kwargs)
            m = dedup_metrics(res.cluster_id, truth)
            m.threshold = t
            rows.append(m)
            if first is None:
                first = res
        return rows, first
    result = find_duplicates(ids, vectors=vectors, texts=texts, method=method, threshold=low,
                             minhash_threshold=minhash_threshold, **kwargs)
    if method == "hybrid":
        mt = DEFAULT_MINHASH_THRESHOLD if minhash_threshold is None else minhash_threshold
        lexical = np.nan_to_num(result.pair_jaccard, nan=-1.0) >= mt
        score = np.where(lexical, np.inf, np.nan_to_num(result.pair_cosine, nan=-np.inf))
    elif method == "minhash":
        score = result.pair_jaccard
    else:
        score = result.pair_cosine
    sweep = threshold_sweep(len(ids), result.pair_a, result.pair_b, score, truth, thresholds)
    return sweep, result


def read_qrels(path: str | Path) -> dict[Any, dict[Any, float]]:
    """query id -> {doc id: relevance} from a Parquet with ``query_id, doc_id, relevance``."""
    import pyarrow.parquet as pq

    path = Path(path)
    names = pq.read_schema(path).names
    missing = [c for c in ("query_id", "doc_id", "relevance") if c not in names]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)} (has {', '.join(names)})")
    table = pq.read_table(path, columns=["query_id", "doc_id", "relevance"])
    out: dict[Any, dict[Any, float]] = {}
    for q, d, r in zip(*(table.column(c).to_pylist() for c in ("query_id", "doc_id", "relevance"))):
        if q is None or d is None or r is None:
            raise ValueError(f"{path}: a qrel row has a null value (query {q!r}, doc {d!r})")
        out.setdefault(q, {})[d] = float(r)
    return out


def format_sweep(rows: Sequence[DedupMetrics], mark: float | None = None) -> str:
    """A markdown table of a sweep; the best F1 and best ARI rows are starred, ``mark`` gets a dagger."""
    if not rows:
        return "(no thresholds)"
    best_f1 = max(rows, key=lambda m: m.f1).threshold
    best_ari = max(rows, key=lambda m: m.ari).threshold
    lines = ["| threshold | ARI | precision | recall | F1 | pairs | clusters |", "|---|---|---|---|---|---|---|"]
    for m in rows:
        tags = ("*F1" if m.threshold == best_f1 else "") + (" *ARI" if m.threshold == best_ari else "")
        if mark is not None and m.threshold is not None and abs(m.threshold - mark) < 1e-9:
            tags += " (default)"
        lines.append(f"| {m.threshold:.3f}{(' ' + tags.strip()) if tags else ''} | {m.ari:.4f} | {m.precision:.4f} | "
                     f"{m.recall:.4f} | {m.f1:.4f} | {m.predicted_pairs:,} | {m.n_clusters:,} |")
    return "\n".join(lines)
