"""The staged dedup: ``read -> sketch | embed -> bands -> candidates -> verify -> components -> clusters``.

`dedup_pipeline` runs the stages with an engine (`LocalEngine` here, ``RayEngine`` on a Ray cluster) under
``work_dir`` (default ``OUT_DIR/stages``), one directory of Parquet shards per stage, and writes
``clusters.parquet``, ``pairs.parquet`` and ``summary.json`` in the format of `DedupResult.write`. Run it
again with the same arguments and it skips the finished stages and shards (see `runner`).

How it differs from `reformer_retrieval.dedup.find_duplicates` (the in-memory path):

* a band bucket gives star edges to its smallest member plus the path through its members (at most
  ``2 (k - 1)`` edges) instead of all its pairs, so ``pairs.parquet`` holds the verified star and path edges,
  and two duplicates linked only through a failed edge can be missed (docs/scale_out.md, "Star and
  path edges against all pairs", measures this against all pairs: none lost on the sample and on wiki_versions with MinHash);
* embedding candidates are exact (``index="flat"``: FAISS range search per shard) or sign-random-projection
  bands (``index="lsh"``) with bands x rows derived from the threshold for recall >= 0.99 at it; the k-NN
  indexes are not offered;
* ``summary.json`` adds ``engine``, ``stages`` (seconds per stage), ``bands`` and ``oversized_buckets``.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from reformer_retrieval.dedup import (
    DEFAULT_MINHASH_NGRAM,
    DEFAULT_MINHASH_PERM,
    DEFAULT_MINHASH_SHINGLE,
    KEEP_POLICIES,
    METHODS,
    DedupResult,
    _representatives,
    _thresholds,
    default_threshold,
)
from reformer_retrieval.indexes.minhash import optimal_params
from reformer_retrieval.pipeline.bands import DEFAULT_MAX_BANDS, DEFAULT_RECALL, BandsTask, srp_params
from reformer_retrieval.pipeline.candidates import DEFAULT_BUCKET_CAP, CandidatesTask
from reformer_retrieval.pipeline.components import ComponentsTask
from reformer_retrieval.pipeline.embed import EmbedTask, VectorsTask, embeddings_files
from reformer_retrieval.pipeline.read import DEFAULT_SHARD_ROWS, ReadTask, check_unique_ids
from reformer_retrieval.pipeline.runner import Engine, StageInfo, StageRunner
from reformer_retrieval.pipeline.sketch import SketchTask, to_matrix
from reformer_retrieval.pipeline.star_rounds import star_components
from reformer_retrieval.pipeline.verify import VerifyHalfTask, VerifyTask

__all__ = ["PIPELINE_INDEXES", "dedup_pipeline"]

#: Embedding candidate sources of the staged dedup.
PIPELINE_INDEXES = ("flat", "lsh")
#: Band keys per candidates partition (bounds the memory of one bucket task).
KEYS_PER_PART = 4_000_000


def dedup_pipeline(
    source: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    method: str = "minhash",
    engine: Engine | None = None,
    work_dir: str | os.PathLike[str] | None = None,
    id_column: str = "id",
    text_column: str = "text",
    threshold: float | None = None,
    minhash_threshold: float | None = None,
    index: str = "flat",
    keep: str = "longest",
    num_perm: int = DEFAULT_MINHASH_PERM,
    shingle: str = DEFAULT_MINHASH_SHINGLE,
    ngram: int = DEFAULT_MINHASH_NGRAM,
    bands: int | None = None,
    rows: int | None = None,
    seed: int = 1,
    model: str | os.PathLike[str] | None = None,
    device: str = "auto",
    encoder_options: dict[str, Any] | None = None,
    recall: float = DEFAULT_RECALL,
    max_bands: int = DEFAULT_MAX_BANDS,
    bucket_cap: int = DEFAULT_BUCKET_CAP,
    edges: str = "star+path",
    components_mode: str = "single",
    shard_rows: int = DEFAULT_SHARD_ROWS,
    show_progress: bool = False,
    embeddings: str | os.PathLike[str] | None = None,
) -> DedupResult:
    """Dedup a Parquet corpus with the staged pipeline and write the outputs into ``out_dir``.

    Args:
        source: Parquet file, directory of shards (hive partitions too), glob, or URI (``file://``, ``s3://``).
        out_dir: Where ``clusters.parquet``, ``pairs.parquet``, ``summary.json`` (and ``skipped.parquet``
            when rows were skipped) go.
        method: ``"minhash"``, ``"embedding"`` or ``"hybrid"`` (thresholds as in `find_duplicates`).
        engine: `LocalEngine` (default) or ``reformer_retrieval.ray_engine.RayEngine``.
        work_dir: Stage directories (default ``out_dir/stages``); keep it to resume.
        index: Embedding candidates: ``"flat"`` (exact range search) or ``"lsh"`` (sign-random-projection bands).
        recall, max_bands: Target recall at the cosine threshold and the most bands of ``index="lsh"``.
        bucket_cap: Buckets larger than this are reported in the summary (still linked, never dropped).
        edges: What a bucket of ``k`` members emits: ``"star+path"`` (star to its smallest member plus the
            path through its members in row order, at most ``2 (k - 1)`` edges) or ``"star"`` (``k - 1``).
        components_mode: ``"single"``: one task runs SciPy's connected components over every verified edge
            (memory O(edges) on one machine); ``"rounds"``: large-star / small-star rounds over edge
            partitions (`reformer_retrieval.pipeline.star_rounds`), no task holding every edge. Same clusters.
        shard_rows: Rows per read shard (shards follow Parquet row groups).
        embeddings: An embeddings dataset made beforehand (``id``, ``embedding``, ``n_tokens``, ``truncated``,
            as ``encode`` writes; file, directory or URI): the ``embed`` stage takes each document's vector from
            it by id instead of encoding (`VectorsTask`); the default threshold is that of its ``model_id``.
        Other arguments: as `reformer_retrieval.dedup.find_duplicates` / `dedup_corpus`.

    Returns:
        The `DedupResult` (also written to ``out_dir``).
    """
    t_total = time.perf_counter()
    if method not in METHODS:
        raise ValueError(f"unknown dedup method {method!r}; choose one of {', '.join(METHODS)}")
    if components_mode not in ("single", "rounds"):
        raise ValueError(f"components_mode must be 'single' or 'rounds', got {components_mode!r}")
    if keep not in KEEP_POLICIES:
        raise ValueError(f"unknown keep policy {keep!r}; choose one of {', '.join(KEEP_POLICIES)}")
    use_emb, use_lex = method in ("embedding", "hybrid"), method in ("minhash", "hybrid")
    if use_emb and index not in PIPELINE_INDEXES:
        raise ValueError(f"the staged dedup takes index {' or '.join(PIPELINE_INDEXES)}, not {index!r}")
    vectors_of = embeddings_files(embeddings)[2] if embeddings is not None and use_emb else None
    if vectors_of is not None and threshold is None:  # the default of the model that made the vectors
        threshold = default_threshold(method, model, model_id=vectors_of["model_id"])
    emb_t, lex_t = _thresholds(method, threshold, minhash_threshold, model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runner = StageRunner(out / "stages" if work_dir is None else work_dir, engine, show_progress)

    read = runner.run(ReadTask(source, id_column, text_column, shard_rows))
    check_unique_ids(read)
    n_shards = read.shards
    ranges = [(int(r["start"]), int(r["stop"])) for r in read.reports]
    n_docs = read.rows - sum(int(r["skipped"]) for r in read.reports)

    sketch = embed = None
    mh_params = srp = None
    model_id = None
    if use_lex:
        if (bands is None) != (rows is None):
            raise ValueError("give both bands and rows, or neither")
        b, r = (bands, rows) if bands is not None else optimal_params(float(lex_t), num_perm)
        if b < 1 or r < 1 or b * r > num_perm:
            raise ValueError(f"bands x rows = {b} x {r} must be >= 1 and fit num_perm={num_perm}")
        mh_params = {"threshold": float(lex_t), "num_perm": num_perm, "bands": b, "rows": r, "seed": seed}
        sketch = runner.run(SketchTask(read.directory, n_shards, num_perm, shingle, ngram, seed), [read])
    if vectors_of is not None:
        model_id = vectors_of["model_id"]
        embed = runner.run(VectorsTask(read.directory, n_shards, os.fspath(embeddings)), [read])
    elif use_emb:
        from reformer_retrieval.encode import model_identity

        _, model_id = model_identity(model, (encoder_options or {}).get("channels") or "both")  # no model load
        embed = runner.run(EmbedTask(read.directory, n_shards, model, device, encoder_options, model_id), [read])
    if use_emb and index == "lsh":
        sb, sr = srp_params(float(emb_t), recall, max_bands)
        srp = {"threshold": float(emb_t), "recall": recall, "bands": sb, "rows": sr, "seed": seed}

    feature_stages = [s for s in (sketch, embed) if s is not None]
    bands_stage: StageInfo | None = None
    if mh_params is not None or srp is not None:
        keys = n_docs * ((mh_params or {}).get("bands", 0) + (srp or {}).get("bands", 0))
        n_parts = max(1, math.ceil(keys / KEYS_PER_PART))
        bands_stage = runner.run(BandsTask(
            n_shards, n_parts, None if sketch is None else sketch.directory, mh_params,
            None if embed is None or srp is None else embed.directory, srp), feature_stages)
    flat = emb_t if use_emb and index == "flat" else None
    candidates = runner.run(CandidatesTask(
        [] if bands_stage is None else [str(p) for p in bands_stage.paths],
        0 if bands_stage is None else bands_stage.shards, [s for s, _ in ranges], bucket_cap,
        [str(p) for p in embed.paths] if embed is not None else [], flat, edges),
        [s for s in (bands_stage, embed if flat is not None else None) if s is not None])
    sketch_dir = None if sketch is None else sketch.directory
    embed_dir = None if embed is None else embed.directory
    half = runner.run(VerifyHalfTask([str(p) for p in candidates.paths], ranges, sketch_dir, embed_dir,
                                     emb_t is not None, lex_t is not None), [candidates, *feature_stages])
    verify = runner.run(VerifyTask([str(p) for p in half.paths], ranges, sketch_dir, embed_dir, emb_t, lex_t,
                                   num_perm), [half, *feature_stages])
    if components_mode == "single":
        components = runner.run(ComponentsTask([str(p) for p in read.paths], [str(p) for p in verify.paths]),
                                [verify])
    else:
        components = star_components(runner, read, verify)

    t0 = time.perf_counter()
    result = _assemble(read, components, verify, embed, keep, method)
    seconds: dict[str, float] = {}
    for name, value in runner.seconds().items():  # the rounds' stages (cc-...) count as components
        key = "components" if name.startswith("cc-") else name
        seconds[key] = round(seconds.get(key, 0.0) + value, 3)
    seconds["clusters"] = round(time.perf_counter() - t0, 3)
    oversized = [o for r in candidates.reports for o in r.get("oversized", [])]
    n = len(result.ids)
    sizes = np.bincount(result.cluster_id) if n else np.zeros(0, np.int64)
    thresholds = {}
    if emb_t is not None:
        thresholds["cosine"] = float(emb_t)
    if lex_t is not None:
        thresholds["jaccard"] = float(lex_t)
    result.summary.update({
        "documents": n,
        "clusters": result.n_clusters,
        "duplicate_clusters": int((sizes > 1).sum()),
        "duplicates": n - result.n_clusters,
        "largest_cluster": int(sizes.max()) if n else 0,
        "method": method,
        "thresholds": thresholds,
        "index": index if use_emb else None,
        "k": None,
        "knn_saturated": 0,
        "keep": keep,
        "candidate_pairs": int(sum(int(r.get("candidates", 0)) for r in verify.reports)),
        "verified_pairs": len(result.pair_a),
        "minhash": ({"num_perm": num_perm, "shingle": shingle, "ngram": ngram, "bands": mh_params["bands"],
                     "rows": mh_params["rows"]} if mh_params else None),
        "srp": srp,
        "edges": edges,
        "components": components_mode,
        "bucket_cap": bucket_cap,
        "oversized_buckets": {"count": int(sum(int(r.get("oversized_count", 0)) for r in candidates.reports)),
                              "largest": sorted(oversized, key=lambda o: -o["size"])[:20]},
        "largest_bucket": max([int(r.get("largest_bucket", 0)) for r in candidates.reports] or [0]),
        "engine": runner.engine.name,
        "work_dir": str(runner.work_dir),
        "model_id": model_id,
        "skipped_rows": read.rows - n,
        "corpus": {"path": os.fspath(source), "id_column": id_column, "text_column": text_column},
        "seconds": {"total": round(time.perf_counter() - t_total, 3), **seconds},
    })
    result.write(out)
    _write_skipped(read, out)
    return result


def _table(paths: list[Path], columns: list[str], filter: Any = None) -> pa.Table:
    return pads.dataset([str(p) for p in paths], format="parquet").to_table(columns=columns, filter=filter)


def _assemble(read: StageInfo, components: StageInfo, verify: StageInfo, embed: StageInfo | None,
              keep: str, method: str) -> DedupResult:
    """The `DedupResult` of the finished stages (documents in corpus order)."""
    docs = _table(read.paths, ["row", "id", "length"], pc.field("skip_reason").is_null())
    order = np.argsort(docs.column("row").to_numpy(), kind="stable")
    docs = docs.take(pa.array(order))
    rows = docs.column("row").to_numpy()
    comp = _table(components.paths, ["row", "cluster"])
    comp = comp.take(pa.array(np.argsort(comp.column("row").to_numpy(), kind="stable")))
    if not np.array_equal(comp.column("row").to_numpy(), rows):
        raise RuntimeError(f"{components.directory} does not cover the documents of {read.directory}")
    cluster = comp.column("cluster").to_numpy().astype(np.int64)
    pairs = _table(verify.paths, ["a", "b", "score", "method", "cosine", "jaccard"])
    a = np.searchsorted(rows, pairs.column("a").to_numpy())
    b = np.searchsorted(rows, pairs.column("b").to_numpy())
    po = np.lexsort((b, a))
    a, b = a[po], b[po]
    score = pairs.column("score").to_numpy()[po].astype(np.float32)
    cos = pairs.column("cosine").to_numpy()[po].astype(np.float64)
    jac = pairs.column("jaccard").to_numpy()[po].astype(np.float64)
    pair_method = np.asarray(pairs.column("method").to_pylist(), dtype=object)[po].tolist()
    n = len(rows)
    max_score = np.full(n, np.nan)
    if len(a):
        best = np.full(n, -np.inf)
        np.maximum.at(best, a, score)
        np.maximum.at(best, b, score)
        max_score = np.where(np.isinf(best), np.nan, best)
    vectors = truncated = None
    if embed is not None:
        # the vectors only for keep="central": the driver would otherwise read every vector for a bool column
        emb = _table(embed.paths, ["row", "truncated"] + (["embedding"] if keep == "central" else []))
        eo = np.argsort(emb.column("row").to_numpy(), kind="stable")
        truncated = emb.column("truncated").to_numpy(zero_copy_only=False)[eo]
        if keep == "central":
            vectors = to_matrix(emb.column("embedding"), np.float32)[eo]
    lengths = docs.column("length").to_numpy()
    rep = _representatives(cluster, keep, vectors, None, lengths if keep == "longest" else None,
                           np.stack([a, b], axis=1), score)
    result = DedupResult(
        ids=docs.column("id").to_pylist(), cluster_id=cluster, is_representative=rep, max_score=max_score,
        pair_a=a, pair_b=b, pair_score=score, pair_method=pair_method, pair_cosine=cos, pair_jaccard=jac,
        summary={},
    )
    if truncated is not None and len(a):
        result.summary["pairs_with_truncated"] = int((truncated[a] & truncated[b]).sum())
    return result


def _write_skipped(read: StageInfo, out: Path) -> None:
    """``skipped.parquet``: rows with a skip reason (id, reason, file, row within the file)."""
    from reformer_retrieval.corpus import SkippedRecord, write_skipped

    skipped = _table(read.paths, ["row", "id", "skip_reason"], pc.field("skip_reason").is_valid())
    target = out / "skipped.parquet"
    if skipped.num_rows == 0:
        return
    file_start: dict[str, int] = {}
    spans = []
    for r in read.reports:
        file_start[r["file"]] = min(file_start.get(r["file"], r["start"]), r["start"])
        spans.append((int(r["start"]), int(r["stop"]), r["file"]))
    starts = np.array([s[0] for s in spans])
    records = []
    for row, doc_id, reason in zip(skipped.column("row").to_pylist(), skipped.column("id").to_pylist(),
                                   skipped.column("skip_reason").to_pylist()):
        file = spans[int(np.searchsorted(starts, row, side="right")) - 1][2]
        records.append(SkippedRecord(doc_id, reason, file, row - file_start[file]))
    id_kind = "int" if pa.types.is_integer(skipped.schema.field("id").type) else "str"
    write_skipped(target, records, id_kind)
