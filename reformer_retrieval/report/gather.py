"""Everything the review page shows, gathered from a dedup output directory (and the corpus, for texts).

`gather_report` reads the run (`reformer_retrieval.report.run`), picks the clusters to show (largest
first, or a seeded sample), scores every shown member against its representative (cosine from the run's
embeddings, Jaccard from the texts with the run's shingles), diffs it (`reformer_retrieval.report.diff`),
finds the pairs just below the threshold (`reformer_retrieval.report.near`) and, with a label column,
sweeps the threshold for a precision-recall curve (`reformer_retrieval.evaluate.threshold_sweep`).
The result is plain data; `reformer_retrieval.report.html` renders it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from reformer_retrieval.report.diff import changed_words, truncate_ops, word_diff
from reformer_retrieval.report.near import NearPairs, cosine_below, jaccard_below, sample_rows
from reformer_retrieval.report.run import DedupRun, load_corpus_columns, load_run

__all__ = ["ReportData", "ReportOptions", "gather_report"]

logger = logging.getLogger(__name__)


@dataclass
class ReportOptions:
    """What the page holds and how it is computed.

    Attributes:
        max_clusters: Show at most this many duplicate clusters (largest first).
        sample: Show a seeded random sample of this many duplicate clusters instead of the largest.
        seed: Seed of every sample.
        max_members: Members per cluster scored and diffed (the rest are counted).
        context: Equal words kept beside each change in a diff.
        near_pairs: Pairs listed just above and just below each threshold.
        near_band: Width of the score band below a threshold searched for near misses.
        near_sample: Documents sampled to find the pairs below a cosine threshold.
        near_sample_jaccard: Documents sampled to find the pairs below a Jaccard threshold.
        chunk_clusters: Clusters per embedded JSON chunk.
        max_diff_chars: Text kept per diff (the rest is counted, not embedded).
    """

    max_clusters: int = 10_000
    sample: int | None = None
    seed: int = 0
    max_members: int = 100
    context: int = 12
    near_pairs: int = 20
    near_band: float = 0.1
    near_sample: int = 2000
    near_sample_jaccard: int = 2000
    chunk_clusters: int = 200
    max_diff_chars: int = 20_000


@dataclass
class ReportData:
    """The page's content (JSON-ready lists; see `reformer_retrieval.report.html` for the layout)."""

    summary: dict[str, Any]
    out_dir: str
    corpus: str | None
    texts_available: bool
    duplicate_clusters: int
    clusters: list[list[Any]]
    histograms: list[dict[str, Any]]
    near: dict[str, dict[str, list[list[Any]]]]
    pr: dict[str, Any] | None
    notes: list[str] = field(default_factory=list)


def _round(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else round(float(v), 4)


def _select_clusters(run: DedupRun, opts: ReportOptions) -> tuple[list[int], int]:
    """Cluster ids to show (largest first, ties by id) and the number of duplicate clusters."""
    sizes = np.bincount(run.cluster_id) if len(run.cluster_id) else np.zeros(0, np.int64)
    dup = np.flatnonzero(sizes > 1)
    if opts.sample is not None and len(dup) > opts.sample:
        dup = np.random.default_rng(opts.seed).choice(dup, opts.sample, replace=False)
    order = dup[np.lexsort((dup, -sizes[dup]))]
    return order[: opts.max_clusters].tolist(), int((sizes > 1).sum())


class _Scorer:
    """Cosine and Jaccard of document pairs (by row), from the run's vectors and the loaded texts."""

    def __init__(self, vectors: np.ndarray | None, texts: dict[int, str], run: DedupRun, lexical: bool,
                 max_chars: int):
        self.vectors = vectors
        self.max_chars = max_chars
        self.texts = texts
        self.shingler = None
        if lexical and texts:
            from reformer_retrieval.indexes.minhash import Shingler

            mh = run.summary.get("minhash") or {}
            self.shingler = Shingler(mh.get("shingle", "word"), int(mh.get("ngram", 2)))
        self._sets: dict[int, np.ndarray] = {}

    def cosine(self, a: int, b: int) -> float | None:
        if self.vectors is None:
            return None
        return float(self.vectors[a] @ self.vectors[b])

    def jaccard(self, a: int, b: int) -> float | None:
        if self.shingler is None or a not in self.texts or b not in self.texts:
            return None
        from reformer_retrieval.indexes.minhash import jaccard

        for r in (a, b):
            if r not in self._sets:
                self._sets[r] = self.shingler.shingles(self.texts[r])
        return jaccard(self._sets[a], self._sets[b])

    def diff(self, a: int, b: int, context: int) -> tuple[int | None, list[Any] | None]:
        if a not in self.texts or b not in self.texts:
            return None, None
        ops = word_diff(self.texts[a], self.texts[b], context=context)
        return changed_words(ops), truncate_ops(ops, self.max_chars)


def _vectors(run: DedupRun) -> np.ndarray | None:
    """The run's embeddings in run order (None without embeddings.parquet or when ids differ)."""
    if run.embeddings_path is None:
        return None
    from reformer_retrieval.corpus import read_embeddings

    table = read_embeddings(run.embeddings_path)
    position = {d: i for i, d in enumerate(table.ids)}
    rows = [position.get(d) for d in run.ids]
    if any(r is None for r in rows):
        logger.warning("%s lacks some ids of the run; cosine scores are left out", run.embeddings_path)
        return None
    return np.ascontiguousarray(table.vectors[rows], dtype=np.float32)


def _corpus_source(run: DedupRun, corpus: Any, id_column: str | None,
                   text_column: str | None) -> tuple[Any, str, str]:
    recorded = run.summary.get("corpus") if isinstance(run.summary.get("corpus"), dict) else {}
    path = corpus if corpus is not None else recorded.get("path")
    if corpus is None and path is not None:
        from reformer_retrieval.corpus_formats import CorpusError, resolve_sources

        try:
            resolve_sources(path)
        except CorpusError:
            logger.warning("the run's corpus %s is gone; pass --corpus to show texts", path)
            path = None
    return path, id_column or recorded.get("id_column", "id"), text_column or recorded.get("text_column", "text")


def _primary_kind(run: DedupRun) -> str | None:
    th = run.thresholds
    if "cosine" in th:
        return "cosine"
    return "jaccard" if "jaccard" in th else None


def _pr_curve(run: DedupRun, labels: dict[Any, Any], near: dict[str, NearPairs],
              position: dict[Any, int]) -> dict[str, Any] | None:
    """Pairwise precision / recall at thresholds around the run's, from the run's and the near pairs."""
    from reformer_retrieval.evaluate import threshold_sweep

    kind = _primary_kind(run)
    if kind is None:
        return None
    missing = [d for d in run.ids if d not in labels]
    if missing:
        raise ValueError(f"the label column has no value for id {missing[0]!r}")
    th = run.thresholds
    score = run.pair_column(kind)
    if kind == "cosine" and "jaccard" in th:  # hybrid: a pair passing the lexical test always counts
        score = np.where(np.nan_to_num(run.pair_column("jaccard"), nan=-1) >= th["jaccard"], np.inf, score)
    score = np.where(np.isnan(score), run.pair_column("score"), score)
    a = np.array([position[d] for d in run.pairs.column("id_a").to_pylist()], dtype=np.int64)
    b = np.array([position[d] for d in run.pairs.column("id_b").to_pylist()], dtype=np.int64)
    nb = near.get(kind)
    if nb is not None and len(nb.scores):
        a, b = np.concatenate([a, nb.rows_a]), np.concatenate([b, nb.rows_b])
        score = np.concatenate([score, nb.scores])
    finite = score[np.isfinite(score)]
    t = th[kind]
    grid = {t}
    if len(finite):
        grid.update(np.linspace(float(finite.min()), float(finite.max()), 24).round(6).tolist())
    sweep = threshold_sweep(len(run.ids), a, b, score, [labels[d] for d in run.ids], sorted(grid))
    points = [(float(m.threshold or 0.0), float(m.recall), float(m.precision)) for m in sweep]
    chosen = next(m for m in sweep if m.threshold is not None and abs(m.threshold - t) < 1e-12)
    return {"kind": kind, "threshold": t, "points": points,
            "chosen": {"precision": chosen.precision, "recall": chosen.recall, "f1": chosen.f1},
            "sampled_below": nb.sampled_docs if nb is not None else 0}


def gather_report(
    out_dir: str | Path,
    corpus: str | Path | None = None,
    id_column: str | None = None,
    text_column: str | None = None,
    labels: str | None = None,
    options: ReportOptions | None = None,
    show_progress: bool = False,
) -> ReportData:
    """Gather the review page's content for the dedup output directory ``out_dir``.

    Args:
        out_dir: The run's output directory.
        corpus: Corpus of the texts, anything a corpus argument takes (default: the one the run recorded
            in summary.json, if still there).
        id_column, text_column: Its columns (default: the recorded ones, else ``id`` / ``text``).
        labels: A ground-truth cluster column of the corpus: adds the precision-recall curve.
        options: `ReportOptions`.
        show_progress: tqdm bar over the clusters.
    """
    opts = options or ReportOptions()
    run = load_run(out_dir)
    position = {d: i for i, d in enumerate(run.ids)}
    th = run.thresholds
    shown, n_dup = _select_clusters(run, opts)
    path, id_col, text_col = _corpus_source(run, corpus, id_column, text_column)
    if labels is not None and path is None:
        raise ValueError("--labels needs the corpus: pass --corpus (the run recorded none that exists)")
    notes: list[str] = []

    # rows whose texts are needed: shown members, the near-threshold pairs, the Jaccard sample
    order = np.lexsort((~run.is_representative, run.cluster_id))
    starts = np.searchsorted(run.cluster_id[order], np.arange(run.cluster_id.max() + 2 if len(order) else 1))
    members_of = {c: order[starts[c]:starts[c + 1]] for c in shown}
    vectors = _vectors(run)
    need: set[int] = set()
    for c in shown:
        need.update(members_of[c][: opts.max_members + 1].tolist())
    jac_rows = sample_rows(len(run.ids), opts.near_sample_jaccard, opts.seed) if "jaccard" in th else None
    if jac_rows is not None and path is not None:
        need.update(jac_rows.tolist())
    near: dict[str, NearPairs] = {}
    if "cosine" in th and vectors is not None:
        near["cosine"] = cosine_below(vectors, th["cosine"], opts.near_band, opts.near_sample, seed=opts.seed)
    elif "cosine" in th:
        notes.append("pairs below the cosine threshold are not shown: the run kept no embeddings.parquet")
    texts: dict[int, str] = {}
    values: dict[str, dict[Any, Any]] = {}
    if path is not None:
        above_rows = _near_above_rows(run, position, opts)
        below_rows = {int(r) for nb in near.values() for r in _top_below(nb, opts.near_pairs)[:, :2].ravel().tolist()}
        need.update(above_rows | below_rows)
        values = load_corpus_columns(path, {run.ids[r] for r in need}, id_col, [text_col])
        texts = {position[d]: t for d, t in values[text_col].items() if isinstance(t, str) and d in position}
        if labels is not None:
            values.update(load_corpus_columns(path, set(run.ids), id_col, [labels]))
        if "jaccard" in th and jac_rows is not None:
            have = np.array([r for r in jac_rows.tolist() if r in texts], dtype=np.int64)
            near["jaccard"] = jaccard_below(have, [texts[r] for r in have.tolist()], th["jaccard"], opts.near_band,
                                            seed=opts.seed, minhash=run.summary.get("minhash"))
    else:
        notes.append("no texts: pass --corpus to see diffs" + (" and Jaccard scores" if "jaccard" in th else ""))
    scorer = _Scorer(vectors, texts, run, lexical="jaccard" in th, max_chars=opts.max_diff_chars)

    clusters: list[list[Any]] = []
    for c in tqdm(shown, desc="report", unit="cluster", disable=not show_progress):
        rows = members_of[c]
        rep = int(rows[0])
        members = []
        for r in rows[1: opts.max_members + 1].tolist():
            changed, ops = scorer.diff(rep, r, opts.context)
            members.append([run.ids[r], _round(scorer.cosine(rep, r)), _round(scorer.jaccard(rep, r)), changed, ops])
        members.sort(key=lambda m: (m[1] if m[1] is not None else (m[2] if m[2] is not None else 2.0)))
        preview = texts[rep][:200] if rep in texts else None
        clusters.append([int(c), len(rows), run.ids[rep], preview, members, max(0, len(rows) - 1 - opts.max_members)])

    histograms, near_lists = [], {}
    for kind, t in th.items():
        run_scores = run.pair_column(kind)
        run_scores = run_scores[~np.isnan(run_scores)]
        nb = near.get(kind, NearPairs.empty(kind))
        histograms.append({"kind": kind, "threshold": t, "above": run_scores, "below": nb.scores,
                           "sampled_docs": nb.sampled_docs})
        near_lists[kind] = {"above": _pair_rows(run, scorer, opts, _above_rows(run, position, kind, t, opts)),
                            "below": _pair_rows(run, scorer, opts, _below_pairs(run, position, kind, t, nb, opts))}
    pr = None
    if labels is not None:
        label_of = {d: v for d, v in values[labels].items() if v is not None}
        pr = _pr_curve(run, label_of, near, position)
    return ReportData(summary=run.summary, out_dir=str(run.out_dir), corpus=None if path is None else str(path), texts_available=bool(texts),
                      duplicate_clusters=n_dup, clusters=clusters, histograms=histograms, near=near_lists, pr=pr,
                      notes=notes)


def _above_rows(run: DedupRun, position: dict[Any, int], kind: str, t: float,
                opts: ReportOptions) -> list[tuple[int, int, float]]:
    """The run's pairs with the lowest ``kind`` scores at or above ``t``."""
    s = run.pair_column(kind)
    idx = np.flatnonzero(s >= t)
    idx = idx[np.argsort(s[idx], kind="stable")][: opts.near_pairs]
    ida, idb = run.pairs.column("id_a").to_pylist(), run.pairs.column("id_b").to_pylist()
    return [(position[ida[i]], position[idb[i]], float(s[i])) for i in idx.tolist()]


def _near_above_rows(run: DedupRun, position: dict[Any, int], opts: ReportOptions) -> set[int]:
    out: set[int] = set()
    for kind, t in run.thresholds.items():
        for a, b, _ in _above_rows(run, position, kind, t, opts):
            out.update((a, b))
        for a, b, _ in _run_below(run, position, kind, t, opts):
            out.update((a, b))
    return out


def _run_below(run: DedupRun, position: dict[Any, int], kind: str, t: float,
               opts: ReportOptions) -> list[tuple[int, int, float]]:
    """Pairs of a hybrid run below this kind's threshold (kept by the other test), highest first."""
    s = run.pair_column(kind)
    idx = np.flatnonzero(s < t)
    idx = idx[np.argsort(-s[idx], kind="stable")][: opts.near_pairs]
    ida, idb = run.pairs.column("id_a").to_pylist(), run.pairs.column("id_b").to_pylist()
    return [(position[ida[i]], position[idb[i]], float(s[i])) for i in idx.tolist()]


def _top_below(nb: NearPairs, k: int) -> np.ndarray:
    """``(k, 3)`` rows a, b, score of the highest-scoring near pairs."""
    idx = np.argsort(-nb.scores, kind="stable")[:k]
    return np.stack([nb.rows_a[idx], nb.rows_b[idx], nb.scores[idx]], axis=1) if len(idx) else np.zeros((0, 3))


def _below_pairs(run: DedupRun, position: dict[Any, int], kind: str, t: float, nb: NearPairs,
                 opts: ReportOptions) -> list[tuple[int, int, float]]:
    rows = [(int(a), int(b), float(s)) for a, b, s in _top_below(nb, opts.near_pairs).tolist()]
    seen = {(a, b) for a, b, _ in rows}
    for a, b, s in _run_below(run, position, kind, t, opts):
        if (min(a, b), max(a, b)) not in seen:
            rows.append((a, b, s))
    return sorted(rows, key=lambda r: -r[2])[: opts.near_pairs]


def _pair_rows(run: DedupRun, scorer: _Scorer, opts: ReportOptions,
               pairs: Sequence[tuple[int, int, float]]) -> list[list[Any]]:
    """``[id_a, id_b, score, cosine, jaccard, merged, changed_words, ops]`` per pair."""
    out = []
    for a, b, s in pairs:
        changed, ops = scorer.diff(a, b, opts.context)
        out.append([run.ids[a], run.ids[b], _round(s), _round(scorer.cosine(a, b)), _round(scorer.jaccard(a, b)),
                    bool(run.cluster_id[a] == run.cluster_id[b]), changed, ops])
    return out
