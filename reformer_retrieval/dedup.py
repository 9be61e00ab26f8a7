"""Near-duplicate detection: candidates -> exact verification -> union-find clusters -> representatives.

Methods:

* ``"embedding"``: candidates from the embedding index, by range search on the exact (``flat``) and the
  ``lsh`` index, or by k-NN on ``hnsw`` / ``ivfpq``; every candidate pair is then re-scored exactly
  by cosine on the stored vectors and kept if ``cosine >= threshold``.
* ``"minhash"``: candidates from MinHash LSH buckets over word (or character) shingles; kept if the
  exact Jaccard similarity of the two shingle sets is ``>= threshold`` (candidates whose MinHash
  estimate lies five standard errors or more below the threshold are dropped before the exact check).
* ``"hybrid"``: the union of both candidate sets; a pair is kept if it passes either test (both
  scores are computed for every candidate).

Kept pairs are clustered by union-find (connected components), and each cluster gets one
representative (``keep``: ``"longest"`` text, ``"first"`` in input order, or ``"central"``: closest to
the cluster's mean vector, or for MinHash alone the member with the highest summed Jaccard).

Default thresholds live here, in one place: `DEFAULT_EMBEDDING_THRESHOLD` (overridden by the key
``"dedup_threshold"`` of the model directory's ``training.json``, so a trained model ships its own) and
`DEFAULT_MINHASH_THRESHOLD`; ``benchmarks/dedup_quality.py`` sweeps them on a labelled corpus.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from tqdm.auto import tqdm

from reformer_retrieval.atomic import atomic_path, atomic_write_text
from reformer_retrieval.indexes.minhash import MinHasher, MinHashIndex, Shingler, jaccard
from reformer_retrieval.indexes.store import VECTOR_KINDS, build_index

__all__ = [
    "DEFAULT_EMBEDDING_THRESHOLD",
    "DEFAULT_KNN",
    "DEFAULT_MINHASH_NGRAM",
    "DEFAULT_MINHASH_PERM",
    "DEFAULT_MINHASH_SHINGLE",
    "DEFAULT_MINHASH_THRESHOLD",
    "METHODS",
    "DedupResult",
    "ThresholdModelMismatch",
    "dedup_corpus",
    "dedup_embeddings",
    "default_threshold",
    "find_duplicates",
    "minhash_inputs",
    "minhash_margin",
    "model_id_of",
    "union_find",
]

logger = logging.getLogger(__name__)

METHODS = ("embedding", "minhash", "hybrid")
KEEP_POLICIES = ("longest", "first", "central")

#: Cosine threshold of ``method="embedding"`` when neither the caller nor the model's training.json gives
#: one (a model trained by someone else). Thresholds are a property of a model, so each trained model
#: ships its own as training.json["dedup_threshold"] (and "hybrid_dedup_threshold"; read by
#: `default_threshold`): the bundled default's are chosen on ../shared/data/dev/wiki_versions with
#: benchmarks/dedup_quality.py (best ARI of the clustered output; for hybrid, precision first).
DEFAULT_EMBEDDING_THRESHOLD = 0.95

#: MinHash defaults of ``method="minhash"`` and of the lexical half of ``"hybrid"``: Jaccard >= 0.2 on
#: word 2-gram shingles, 128 permutations. Chosen with benchmarks/dedup_quality.py (pairwise F1; docs/benchmarks.md,
#: "Choosing the thresholds") over three labelled sets: wiki_versions (dev), an OCR-noised copy of it and
#: the bundled sample (whose variants add boilerplate). Word 2-grams at 0.2 reach F1 0.881 / 0.723 / 1.000
#: with precision >= 0.99 on all three; word 3-grams at their best common threshold (0.15) reach
#: 0.888 / 0.665 / 1.000; lower thresholds gain on wiki_versions but merge unrelated sample documents
#: through shared boilerplate (precision 0.90 at 0.15 with 2-grams, 0.93 at 0.10 with 3-grams).
DEFAULT_MINHASH_THRESHOLD = 0.2
DEFAULT_MINHASH_PERM = 128
DEFAULT_MINHASH_SHINGLE = "word"
DEFAULT_MINHASH_NGRAM = 2
#: Neighbours per document fetched from approximate (k-NN) indexes.
DEFAULT_KNN = 32


def model_id_of(model_dir: str | Path) -> str:
    """The ``model_id`` of a model directory, from its weights file's metadata (the weights are loaded and
    fingerprinted only when the metadata lacks it)."""
    from safetensors import safe_open

    from reformer_retrieval.checkpoint import WEIGHTS_FILE, ModelDirectoryError, load_model

    path = Path(model_dir) / WEIGHTS_FILE
    if not path.is_file():
        raise ModelDirectoryError(f"model directory {model_dir} has no {WEIGHTS_FILE}")
    with safe_open(str(path), framework="np") as fh:
        recorded = (fh.metadata() or {}).get("model_id")
    return recorded if recorded else load_model(model_dir).model_id


class ThresholdModelMismatch(ValueError):
    """No default threshold: the vectors come from another model than the one whose training.json is at hand."""


def default_threshold(method: str, model_dir: str | Path | None = None, model_id: str | None = None) -> float:
    """The threshold used when none is given.

    ``"embedding"``: ``training.json["dedup_threshold"]`` of ``model_dir`` (default: the bundled model) if
    present, else `DEFAULT_EMBEDDING_THRESHOLD`. ``"hybrid"``: its ``"hybrid_dedup_threshold"`` if present
    (a cosine edge there is added to the lexical ones, so it is set for precision, usually higher), else the
    same as ``"embedding"``. ``"minhash"``: `DEFAULT_MINHASH_THRESHOLD`.

    ``model_id``: the model that made the vectors (an embeddings file records it). A cosine threshold is a
    property of one model, so when ``model_dir``'s (default: the bundled model's) id differs,
    `ThresholdModelMismatch` is raised, naming both ids and suggesting ``--model`` or ``--threshold``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown dedup method {method!r}; choose one of {', '.join(METHODS)}")
    if method == "minhash":
        return DEFAULT_MINHASH_THRESHOLD
    from reformer_retrieval.checkpoint import read_training
    from reformer_retrieval.encode import DEFAULT_MODEL_DIR

    if model_id is not None:
        have = model_id_of(DEFAULT_MODEL_DIR if model_dir is None else model_dir)
        if have != model_id:
            which = f"the model in {model_dir}" if model_dir is not None else "the bundled default model"
            raise ThresholdModelMismatch(
                f"the embeddings were made by model {model_id}, but {which} is {have}: its default cosine "
                f"threshold does not apply to them; pass --model DIR (the directory of model {model_id}) or "
                "--threshold VALUE"
            )
    training = read_training(DEFAULT_MODEL_DIR if model_dir is None else model_dir)
    value = training.get("dedup_threshold")
    if method == "hybrid" and training.get("hybrid_dedup_threshold") is not None:
        value = training["hybrid_dedup_threshold"]
    if value is None:
        return DEFAULT_EMBEDDING_THRESHOLD
    value = float(value)
    if not -1.0 <= value <= 1.0:
        raise ValueError(f"training.json of {model_dir or DEFAULT_MODEL_DIR} has a {method} threshold {value}, not in [-1, 1]")
    return value


def union_find(n: int, rows_a: np.ndarray, rows_b: np.ndarray) -> np.ndarray:
    """Cluster labels (0..k-1, numbered by each cluster's first row) of the graph with edges ``(a, b)``.

    Connected components = the result of union-find over the edges; computed with SciPy's
    ``connected_components`` (linear time, C speed), then renumbered so that labels follow the order
    of each cluster's smallest row and do not depend on the edge order.
    """
    rows_a = np.asarray(rows_a, dtype=np.int64)
    rows_b = np.asarray(rows_b, dtype=np.int64)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if len(rows_a) and (min(rows_a.min(), rows_b.min()) < 0 or max(rows_a.max(), rows_b.max()) >= n):
        raise ValueError(f"pair rows must lie in 0..{n - 1}")
    graph = coo_matrix((np.ones(len(rows_a), dtype=np.int8), (rows_a, rows_b)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    first = np.full(labels.max() + 1, n, dtype=np.int64)
    np.minimum.at(first, labels, np.arange(n))
    rank = np.empty_like(first)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[labels].astype(np.int64)


@dataclass
class DedupResult:
    """Clusters and verified pairs of one dedup run.

    Attributes:
        ids: Every input id, in input order.
        cluster_id: Cluster of each document (0..k-1, numbered by first member).
        is_representative: One True per cluster.
        max_score: Highest verified pair score of each document (NaN for singletons).
        pair_a, pair_b: Rows of the verified pairs (``a < b``).
        pair_score: Score of each pair: cosine if the embedding test passed, else Jaccard.
        pair_method: ``"embedding"``, ``"minhash"`` or ``"embedding+minhash"`` (which tests passed).
        pair_cosine, pair_jaccard: Both scores where computed (NaN otherwise).
        summary: Counts, thresholds and seconds per stage.
    """

    ids: list[Any]
    cluster_id: np.ndarray
    is_representative: np.ndarray
    max_score: np.ndarray
    pair_a: np.ndarray
    pair_b: np.ndarray
    pair_score: np.ndarray
    pair_method: list[str]
    pair_cosine: np.ndarray
    pair_jaccard: np.ndarray
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def cluster_size(self) -> np.ndarray:
        """Size of each document's cluster."""
        return np.bincount(self.cluster_id)[self.cluster_id] if len(self.cluster_id) else self.cluster_id

    @property
    def n_clusters(self) -> int:
        """Number of clusters, singletons included."""
        return int(self.cluster_id.max()) + 1 if len(self.cluster_id) else 0

    def clusters(self) -> list[list[Any]]:
        """Ids of every cluster of two or more documents (representative first)."""
        order = np.lexsort((~self.is_representative, self.cluster_id))
        groups: dict[int, list[Any]] = {}
        for row in order.tolist():
            groups.setdefault(int(self.cluster_id[row]), []).append(self.ids[row])
        return [g for g in groups.values() if len(g) > 1]

    def _id_type(self) -> pa.DataType:
        return pa.string() if self.ids and isinstance(self.ids[0], str) else pa.int64()

    def clusters_table(self) -> pa.Table:
        """``id, cluster_id, cluster_size, is_representative, max_score`` (null score for singletons)."""
        score = pa.array(self.max_score.astype(np.float32), pa.float32(), mask=np.isnan(self.max_score))
        return pa.table({
            "id": pa.array(self.ids, self._id_type()),
            "cluster_id": pa.array(self.cluster_id, pa.int64()),
            "cluster_size": pa.array(self.cluster_size, pa.int64()),
            "is_representative": pa.array(self.is_representative, pa.bool_()),
            "max_score": score,
        })

    def pairs_table(self) -> pa.Table:
        """``id_a, id_b, score, method, cosine, jaccard``, best score first."""
        order = np.lexsort((self.pair_b, self.pair_a, -self.pair_score.astype(np.float64)))
        ids = np.asarray(self.ids, dtype=object)

        def col(values: np.ndarray) -> pa.Array:
            v = values[order].astype(np.float32)
            return pa.array(v, pa.float32(), mask=np.isnan(v))

        return pa.table({
            "id_a": pa.array(ids[self.pair_a[order]].tolist(), self._id_type()),
            "id_b": pa.array(ids[self.pair_b[order]].tolist(), self._id_type()),
            "score": pa.array(self.pair_score[order].astype(np.float32), pa.float32()),
            "method": pa.array([self.pair_method[i] for i in order.tolist()], pa.string()),
            "cosine": col(self.pair_cosine),
            "jaccard": col(self.pair_jaccard),
        })

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """Write ``clusters.parquet``, ``pairs.parquet`` and ``summary.json`` into ``out_dir`` (atomically)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        paths = {"clusters": out / "clusters.parquet", "pairs": out / "pairs.parquet", "summary": out / "summary.json"}
        for key, table in (("clusters", self.clusters_table()), ("pairs", self.pairs_table())):
            with atomic_path(paths[key], suffix=".parquet") as tmp:
                pq.write_table(table, tmp)
        self.summary.setdefault("seconds", {})["write"] = round(time.perf_counter() - start, 3)
        atomic_write_text(paths["summary"], json.dumps(self.summary, indent=2, sort_keys=True, default=str))
        return paths

    def summary_lines(self) -> list[str]:
        """The human-readable summary printed by the CLI."""
        s = self.summary
        lines = [
            f"{s['documents']:,} documents -> {s['clusters']:,} clusters ({s['duplicate_clusters']:,} with "
            f"duplicates); {s['duplicates']:,} documents are duplicates of a representative",
            f"method {s['method']}: {s['candidate_pairs']:,} candidate pairs, {s['verified_pairs']:,} verified "
            f"({', '.join(f'{k} >= {v:g}' for k, v in s['thresholds'].items())})",
            "time: " + ", ".join(f"{k} {v:.2f} s" for k, v in s.get("seconds", {}).items()),
        ]
        if s.get("knn_saturated"):
            lines.append(
                f"warning: {s['knn_saturated']:,} documents had all {s['k']} neighbours above the threshold; "
                "raise k (--k) or use the exact index, some duplicates may be missing"
            )
        if s.get("pairs_with_truncated"):
            lines.append(
                f"warning: {s['pairs_with_truncated']:,} verified pairs involve truncated documents (a shared "
                "prefix can look like a duplicate); encode with long_docs='window' to read them whole"
            )
        return lines


def _canonical_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Unique ``(min, max)`` pairs without self-pairs, as an ``(m, 2)`` int64 array."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    keep = (a != b) & (a >= 0) & (b >= 0)
    lo, hi = np.minimum(a[keep], b[keep]), np.maximum(a[keep], b[keep])
    if len(lo) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    return np.unique(np.stack([lo, hi], axis=1), axis=0)


def _cosines(vectors: np.ndarray, pairs: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
    out = np.empty(len(pairs), dtype=np.float32)
    for s in range(0, len(pairs), chunk):
        p = pairs[s:s + chunk]
        out[s:s + chunk] = np.einsum("ij,ij->i", vectors[p[:, 0]], vectors[p[:, 1]])
    return out


def _embedding_candidates(
    vectors: np.ndarray, threshold: float, index_kind: str, k: int, index_params: dict[str, Any],
    show_progress: bool, query_batch: int = 4096,
) -> tuple[np.ndarray, int]:
    """Candidate pairs from the embedding index, and the number of k-NN lists that were full."""
    n = len(vectors)
    if index_kind == "lsh":  # tables / bits sized for recall 0.99 at the threshold (indexes/lsh_params.py)
        index_params = {"threshold": threshold, "expected_count": max(n, 1), **index_params}
    index = build_index(index_kind, vectors, list(range(n)), **index_params)
    found, saturated = [], 0
    bar = tqdm(total=n, desc=f"search ({index_kind})", unit="doc", disable=not show_progress)
    for s in range(0, n, query_batch):
        q = vectors[s:s + query_batch]
        own = np.arange(s, s + len(q), dtype=np.int64)
        if index_kind in ("flat", "lsh"):
            res = index.range_search(q, threshold)
            found.append(_canonical_pairs(own[res.query_index()], res.rows))
        else:
            res = index.search(q, min(k + 1, n))
            rows = res.rows
            found.append(_canonical_pairs(np.repeat(own, rows.shape[1]), rows.ravel()))
            if rows.shape[1] >= k + 1:
                saturated += int((res.scores[:, -1] >= threshold).sum())
        bar.update(len(q))
    bar.close()
    pairs = np.unique(np.concatenate(found), axis=0) if found else np.zeros((0, 2), np.int64)
    return pairs, saturated


def _signatures(hasher: MinHasher, shingle_sets: Sequence[np.ndarray], batch: int = 256) -> np.ndarray:
    """MinHash signatures ``(n, num_perm)`` of ``shingle_sets``, ``batch`` sets at a time (bounds the memory)."""
    if len(shingle_sets) == 0:
        return np.zeros((0, hasher.num_perm), dtype=np.uint32)
    return np.concatenate([hasher.signatures_from_shingles(shingle_sets[s:s + batch])
                           for s in range(0, len(shingle_sets), batch)])


def minhash_inputs(
    texts: Sequence[str],
    num_perm: int = DEFAULT_MINHASH_PERM,
    shingle: str = DEFAULT_MINHASH_SHINGLE,
    ngram: int = DEFAULT_MINHASH_NGRAM,
    seed: int = 1,
) -> tuple[list[np.ndarray], np.ndarray]:
    """Shingle sets and MinHash signatures of ``texts``, as `find_duplicates` computes them with these settings.

    Pass both back as ``shingle_sets=`` and ``signatures=`` to dedup the same texts several times
    (e.g. at several Jaccard thresholds) without shingling and hashing them again.
    """
    hasher = MinHasher(num_perm, seed, Shingler(shingle, ngram))
    sets = [hasher.shingler.shingles(t) for t in texts]
    return sets, _signatures(hasher, sets)


def minhash_margin(num_perm: int) -> float:
    """How far below the threshold a MinHash estimate may lie and still get the exact Jaccard check."""
    return max(0.1, 2.5 / np.sqrt(num_perm))


def _thresholds(method: str, threshold: float | None, minhash_threshold: float | None,
                model_dir: str | Path | None) -> tuple[float | None, float | None]:
    """(cosine, Jaccard) thresholds of ``method`` (None where it does not use that test), defaults filled
    in (`default_threshold`, `DEFAULT_MINHASH_THRESHOLD`); `ValueError` when one is out of range."""
    use_emb = method in ("embedding", "hybrid")
    emb_t = (threshold if threshold is not None else default_threshold(method, model_dir)) if use_emb else None
    if method == "minhash":
        lex_t = threshold if threshold is not None else DEFAULT_MINHASH_THRESHOLD
    elif method == "hybrid":
        lex_t = minhash_threshold if minhash_threshold is not None else DEFAULT_MINHASH_THRESHOLD
    else:
        lex_t = None
    if lex_t is not None and not 0.0 < lex_t < 1.0:
        raise ValueError(f"the Jaccard threshold must be in (0, 1), got {lex_t}")
    if emb_t is not None and not -1.0 <= emb_t <= 1.0:
        raise ValueError(f"the cosine threshold must be in [-1, 1], got {emb_t}")
    return emb_t, lex_t


def find_duplicates(
    ids: Sequence[Any],
    vectors: np.ndarray | None = None,
    texts: Sequence[str] | None = None,
    method: str = "embedding",
    threshold: float | None = None,
    minhash_threshold: float | None = None,
    index: str = "flat",
    k: int = DEFAULT_KNN,
    keep: str = "longest",
    lengths: Sequence[int] | np.ndarray | None = None,
    truncated: np.ndarray | None = None,
    num_perm: int = DEFAULT_MINHASH_PERM,
    shingle: str = DEFAULT_MINHASH_SHINGLE,
    ngram: int = DEFAULT_MINHASH_NGRAM,
    bands: int | None = None,
    rows: int | None = None,
    seed: int = 1,
    index_params: dict[str, Any] | None = None,
    model_dir: str | Path | None = None,
    show_progress: bool = False,
    shingle_sets: Sequence[np.ndarray] | None = None,
    signatures: np.ndarray | None = None,
    exclude_pairs: Sequence[tuple[Any, Any]] | None = None,
) -> DedupResult:
    """Find near-duplicate clusters among documents given by vectors and/or texts.

    Args:
        ids: Document ids (unique), in the order of ``vectors`` / ``texts``.
        vectors: Unit embeddings ``(n, dim)`` (needed by ``embedding`` and ``hybrid``).
        texts: Texts (needed by ``minhash`` and ``hybrid``).
        method: ``"embedding"``, ``"minhash"`` or ``"hybrid"``.
        threshold: Cosine threshold (``embedding``, ``hybrid``) or Jaccard threshold (``minhash``);
            ``None`` = `default_threshold`.
        minhash_threshold: Jaccard threshold of the lexical half of ``hybrid`` (default
            `DEFAULT_MINHASH_THRESHOLD`).
        index: Embedding index for candidates: ``flat`` (exact range search), ``lsh`` (range search
            over LSH candidates), ``hnsw`` or ``ivfpq`` (k-NN).
        k: Neighbours per document for the k-NN indexes.
        keep: Representative policy: ``"longest"`` (falls back to ``"first"``, with a warning, when
            neither ``texts`` nor ``lengths`` is given), ``"first"`` or ``"central"``.
        lengths: Document lengths for ``keep="longest"`` (default: text lengths in characters).
        truncated: Per-document truncation flags (to warn about pairs of truncated documents).
        num_perm, shingle, ngram, bands, rows, seed: MinHash settings (bands x rows derived from the
            threshold unless given).
        index_params: Extra backend parameters (e.g. ``{"ef_search": 256}``).
        model_dir: Model directory whose ``training.json`` may give the default cosine threshold.
        show_progress: Show tqdm bars.
        shingle_sets: Pre-computed ``Shingler(shingle, ngram).shingles(text)`` of every text (saves the
            shingling when the same texts are deduplicated several times, e.g. in a threshold sweep).
        signatures: Pre-computed MinHash signatures ``(n, num_perm)`` of the texts with these MinHash
            settings (`minhash_inputs` gives both; saves the hashing in a threshold sweep).
        exclude_pairs: Id pairs to keep in separate clusters (reviewer marks "not duplicate"); verified
            pairs are filtered by `reformer_retrieval.marks.keep_apart` before clustering.
    """
    t_total = time.perf_counter()
    ids = list(ids)
    n = len(ids)
    if method not in METHODS:
        raise ValueError(f"unknown dedup method {method!r}; choose one of {', '.join(METHODS)}")
    if keep not in KEEP_POLICIES:
        raise ValueError(f"unknown keep policy {keep!r}; choose one of {', '.join(KEEP_POLICIES)}")
    if index not in VECTOR_KINDS:
        raise ValueError(f"unknown index kind {index!r}; choose one of {', '.join(VECTOR_KINDS)}")
    if len(set(ids)) != n:
        raise ValueError("ids must be unique")
    if keep == "longest" and lengths is None and texts is None:
        logger.warning("keep='longest' needs texts or lengths; none given, so keeping the first of each cluster")
        keep = "first"
    use_emb = method in ("embedding", "hybrid")
    use_lex = method in ("minhash", "hybrid")
    if use_emb:
        if vectors is None:
            raise ValueError(f"method {method!r} needs embeddings (vectors)")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != n:
            raise ValueError(f"vectors have shape {vectors.shape}; expected ({n}, dim)")
    if use_lex and texts is None:
        raise ValueError(f"method {method!r} needs the texts")
    if texts is not None and len(texts) != n:
        raise ValueError(f"{len(texts)} texts for {n} ids")
    emb_t, lex_t = _thresholds(method, threshold, minhash_threshold, model_dir)
    seconds: dict[str, float] = {}
    candidates = []
    saturated = 0
    shingles: list[np.ndarray] | None = None
    mh: MinHashIndex | None = None
    raw_shingles = False

    if use_emb and n > 1:
        t0 = time.perf_counter()
        emb_pairs, saturated = _embedding_candidates(
            vectors, float(emb_t), index, k, dict(index_params or {}), show_progress
        )
        candidates.append(emb_pairs)
        seconds["embedding_candidates"] = time.perf_counter() - t0
    if use_lex and n > 1:
        t0 = time.perf_counter()
        mh = MinHashIndex(threshold=float(lex_t), num_perm=num_perm, bands=bands, rows=rows, shingle=shingle,
                          ngram=ngram, seed=seed)
        if shingle_sets is not None:
            if len(shingle_sets) != n:
                raise ValueError(f"{len(shingle_sets)} shingle sets for {n} documents")
            shingles = list(shingle_sets)
        else:  # raw hashes (repeats included): enough for signatures; made unique only for verification
            shingles = [mh.shingler.hashes(t)
                        for t in tqdm(texts, desc="shingle", unit="doc", disable=not show_progress)]
            raw_shingles = True
        if signatures is not None:
            if np.shape(signatures) != (n, num_perm):
                raise ValueError(f"signatures have shape {np.shape(signatures)}; expected ({n}, {num_perm})")
            sigs = signatures
        else:
            sigs = _signatures(mh.hasher, shingles)
        mh.add_signatures(sigs, list(range(n)))
        candidates.append(mh.candidate_pairs())
        seconds["minhash_candidates"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    pairs = np.unique(np.concatenate(candidates), axis=0) if candidates else np.zeros((0, 2), np.int64)
    cos = _cosines(vectors, pairs) if use_emb else np.full(len(pairs), np.nan, np.float32)
    if mh is not None and shingles is not None:
        # pairs whose MinHash estimate is far (>= 5 standard errors) below the threshold are rejected
        # without the exact check; every accepted pair is verified exactly
        margin = minhash_margin(num_perm)
        estimate = mh.estimated_jaccard(pairs[:, 0], pairs[:, 1]) if len(pairs) else np.zeros(0)
        check = np.flatnonzero(estimate >= lex_t - margin)
        if raw_shingles:
            for row in np.unique(pairs[check]).tolist():
                shingles[row] = np.unique(shingles[row])
        jac = np.full(len(pairs), np.nan, np.float32)
        jac[check] = np.fromiter((jaccard(shingles[a], shingles[b]) for a, b in pairs[check].tolist()),
                                 dtype=np.float32, count=len(check))
    else:
        jac = np.full(len(pairs), np.nan, np.float32)
    pass_emb = cos >= np.float32(emb_t) if use_emb else np.zeros(len(pairs), bool)
    pass_lex = np.nan_to_num(jac, nan=-1.0) >= np.float32(lex_t) if lex_t is not None else np.zeros(len(pairs), bool)
    ok = pass_emb | pass_lex
    pairs, cos, jac, pass_emb, pass_lex = pairs[ok], cos[ok], jac[ok], pass_emb[ok], pass_lex[ok]
    score = np.where(pass_emb, cos, jac).astype(np.float32)
    labels = np.array(["minhash", "embedding", "minhash", "embedding+minhash"])
    pair_method = labels[pass_emb.astype(int) + 2 * pass_lex.astype(int)].tolist()
    seconds["verify"] = time.perf_counter() - t0
    excluded = 0
    if exclude_pairs:
        from reformer_retrieval.marks import keep_apart

        kept = keep_apart(ids, pairs, score, exclude_pairs)
        excluded = int((~kept).sum())
        pairs, cos, jac, score = pairs[kept], cos[kept], jac[kept], score[kept]
        pair_method = [m_ for m_, k_ in zip(pair_method, kept.tolist()) if k_]

    t0 = time.perf_counter()
    cluster = union_find(n, pairs[:, 0], pairs[:, 1])
    max_score = np.full(n, np.nan, dtype=np.float64)
    if len(pairs):
        best = np.full(n, -np.inf)
        np.maximum.at(best, pairs[:, 0], score)
        np.maximum.at(best, pairs[:, 1], score)
        max_score = np.where(np.isinf(best), np.nan, best)
    rep = _representatives(cluster, keep, vectors if use_emb else None, texts, lengths, pairs, score)
    seconds["cluster"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - t_total

    n_clusters = int(cluster.max()) + 1 if n else 0
    sizes = np.bincount(cluster) if n else np.zeros(0, np.int64)
    thresholds = {}
    if emb_t is not None:
        thresholds["cosine"] = float(emb_t)
    if lex_t is not None:
        thresholds["jaccard"] = float(lex_t)
    summary: dict[str, Any] = {
        "documents": n,
        "clusters": n_clusters,
        "duplicate_clusters": int((sizes > 1).sum()),
        "duplicates": n - n_clusters,
        "largest_cluster": int(sizes.max()) if n else 0,
        "method": method,
        "thresholds": thresholds,
        "index": index if use_emb else None,
        "k": k if use_emb and index in ("hnsw", "ivfpq") else None,
        "knn_saturated": saturated,
        "keep": keep,
        "candidate_pairs": int(sum(len(c) for c in candidates)),
        "verified_pairs": len(pairs),
        "minhash": ({"num_perm": num_perm, "shingle": shingle, "ngram": ngram} if use_lex else None),
        "seconds": {k_: round(v, 3) for k_, v in seconds.items()},
    }
    if exclude_pairs is not None:
        summary["excluded_pairs"] = excluded
    if truncated is not None and len(pairs):
        tr = np.asarray(truncated, dtype=bool)
        summary["pairs_with_truncated"] = int((tr[pairs[:, 0]] & tr[pairs[:, 1]]).sum())
    return DedupResult(
        ids=ids, cluster_id=cluster, is_representative=rep, max_score=max_score,
        pair_a=pairs[:, 0].copy(), pair_b=pairs[:, 1].copy(), pair_score=score, pair_method=pair_method,
        pair_cosine=cos.astype(np.float64), pair_jaccard=jac.astype(np.float64), summary=summary,
    )


def _representatives(
    cluster: np.ndarray,
    keep: str,
    vectors: np.ndarray | None,
    texts: Sequence[str] | None,
    lengths: Sequence[int] | np.ndarray | None,
    pairs: np.ndarray,
    score: np.ndarray,
) -> np.ndarray:
    """One True per cluster: the member chosen by ``keep`` (ties to the first row)."""
    n = len(cluster)
    if n == 0:
        return np.zeros(0, dtype=bool)
    rows = np.arange(n)
    if keep == "first":
        key = np.zeros(n)
    elif keep == "longest":
        if lengths is not None:
            key = np.asarray(lengths, dtype=np.float64)
        elif texts is not None:
            key = np.fromiter((len(t) for t in texts), dtype=np.float64, count=n)
        else:
            raise ValueError("keep='longest' needs the texts or their lengths")
        if len(key) != n:
            raise ValueError(f"{len(key)} lengths for {n} documents")
    elif vectors is not None:  # central: closest to the cluster's mean vector
        centroids = np.zeros((int(cluster.max()) + 1, vectors.shape[1]), dtype=np.float64)
        np.add.at(centroids, cluster, vectors)
        key = np.einsum("ij,ij->i", vectors.astype(np.float64), centroids[cluster])
    else:  # central without vectors: the member with the highest summed pair score
        key = np.zeros(n)
        np.add.at(key, pairs[:, 0], score)
        np.add.at(key, pairs[:, 1], score)
    # best key first, then the smallest row; the first row of each cluster in that order wins
    order = np.lexsort((rows, -key, cluster))
    first = np.ones(n, dtype=bool)
    first[1:] = cluster[order][1:] != cluster[order][:-1]
    rep = np.zeros(n, dtype=bool)
    rep[order[first]] = True
    return rep


def dedup_embeddings(
    embeddings: str | Path,
    out_dir: str | Path | None = None,
    corpus: str | Path | None = None,
    id_column: str = "id",
    text_column: str = "text",
    method: str = "embedding",
    model_dir: str | Path | None = None,
    **kwargs: Any,
) -> DedupResult:
    """Dedup from an embeddings Parquet file (plus the corpus, for ``minhash``/``hybrid`` or ``keep='longest'``).

    Writes ``clusters.parquet``, ``pairs.parquet`` and ``summary.json`` into ``out_dir`` if given.
    Other keyword arguments go to `find_duplicates`.
    """
    from reformer_retrieval.corpus import read_embeddings

    t0 = time.perf_counter()
    table = read_embeddings(embeddings)
    texts = None
    if corpus is not None:
        texts = _texts_for(corpus, table.ids, id_column, text_column)
    elif method != "embedding":
        raise ValueError(f"method {method!r} needs the corpus texts: pass corpus= (CLI: --corpus)")
    read_s = time.perf_counter() - t0
    lengths = kwargs.pop("lengths", None)
    if lengths is None and texts is None:
        lengths = table.n_tokens
    if kwargs.get("threshold") is None and method != "minhash":  # the default of the model that made them
        kwargs["threshold"] = default_threshold(method, model_dir, model_id=table.model_id)
    result = find_duplicates(
        table.ids, vectors=table.vectors, texts=texts, method=method, lengths=lengths,
        truncated=table.truncated, model_dir=model_dir, **kwargs,
    )
    result.summary["model_id"] = table.model_id
    result.summary["corpus"] = None if corpus is None else _corpus_record(corpus, id_column, text_column)
    result.summary["seconds"]["read"] = round(read_s, 3)
    if out_dir is not None:
        result.write(out_dir)
    return result


def _corpus_record(corpus: Any, id_column: str, text_column: str) -> dict[str, Any]:
    """summary.json's record of the corpus (a local path made absolute; a glob, URI or list kept as given)."""
    if isinstance(corpus, (str, Path)):
        path: Any = str(Path(corpus).resolve()) if Path(corpus).exists() else str(corpus)
    else:
        path = [str(c) for c in corpus]
    return {"path": path, "id_column": id_column, "text_column": text_column}


def _texts_for(corpus: str | Path, ids: Sequence[Any], id_column: str, text_column: str) -> list[str]:
    """Texts of ``ids`` from the corpus, in that order; raises naming an id the corpus lacks."""
    from reformer_retrieval.corpus import read_texts

    corpus_ids, corpus_texts, _ = read_texts(corpus, id_column, text_column, on_duplicate="keep_first")
    lookup: dict[Any, str] = dict(zip(corpus_ids, corpus_texts))
    out = []
    for doc_id in ids:
        text = lookup.get(doc_id)
        if text is None:
            raise ValueError(f"id {doc_id!r} of the embeddings is not in the corpus {corpus} (column {id_column!r})")
        out.append(text)
    return out


def dedup_corpus(
    corpus: str | Path,
    out_dir: str | Path,
    method: str = "embedding",
    model: str | Path | None = None,
    id_column: str = "id",
    text_column: str = "text",
    device: str = "auto",
    encoder_options: dict[str, Any] | None = None,
    resume: bool = False,
    show_progress: bool = True,
    **kwargs: Any,
) -> DedupResult:
    """Dedup a Parquet corpus end to end: encode (if the method needs embeddings), then `find_duplicates`.

    The embeddings are kept as ``out_dir/embeddings.parquet`` (reused by `reformer-retrieval index build`
    and by a later run with ``resume=True``); rows the corpus reader skips (null or empty text) are
    listed in ``out_dir/skipped.parquet``. Other keyword arguments go to `find_duplicates`.
    """
    from reformer_retrieval.corpus import SkipReport, corpus_id_kind, iter_batches, read_embeddings

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    ids: list[Any] = []
    texts: list[str] | None = [] if method != "embedding" else None  # embedding alone needs only lengths
    lengths: list[int] = []
    report = SkipReport()
    for batch in iter_batches(corpus, id_column, text_column):
        ids.extend(batch.ids)
        lengths.extend(len(t) for t in batch.texts)
        if texts is not None:
            texts.extend(batch.texts)
        report.add(batch.skipped)
    if len(report):
        report.write(out / "skipped.parquet", corpus_id_kind(corpus, id_column, text_column))
        logger.warning("%s; listed in %s", report.summary(), out / "skipped.parquet")
    seconds["read"] = time.perf_counter() - t0
    vectors = truncated = None
    model_id = None
    if method in ("embedding", "hybrid"):
        from reformer_retrieval.encode import Encoder

        t0 = time.perf_counter()
        encoder = Encoder.load(model, device=device, **(encoder_options or {}))
        emb_path = out / "embeddings.parquet"
        reuse = False
        if resume and emb_path.is_file():
            from reformer_retrieval.corpus import read_embeddings_metadata

            reuse = read_embeddings_metadata(emb_path)["model_id"] == encoder.model_id
        if not reuse:
            encoder.encode_parquet(corpus, emb_path, id_column=id_column, text_column=text_column, resume=resume,
                                   show_progress=show_progress, skipped_path=out / "embeddings.skipped.parquet")
        table = read_embeddings(emb_path)
        if table.ids != ids:
            raise ValueError(f"{emb_path} does not hold the corpus documents in order; delete it and run again")
        vectors, truncated, model_id = table.vectors, table.truncated, table.model_id
        seconds["encode"] = time.perf_counter() - t0
    kwargs.setdefault("lengths", lengths)
    result = find_duplicates(
        ids, vectors=vectors, texts=texts, method=method, truncated=truncated, model_dir=model,
        show_progress=show_progress, **kwargs,
    )
    result.summary["model_id"] = model_id
    result.summary["corpus"] = _corpus_record(corpus, id_column, text_column)
    result.summary["skipped_rows"] = len(report)
    for key, value in seconds.items():
        result.summary["seconds"][key] = round(value, 3)
    result.write(out)
    return result
