"""The Ray engine (``pip install 'reformer-retrieval[ray]'``): the same stages and encoder on a Ray cluster.

* `RayEngine` runs the shard tasks of `reformer_retrieval.pipeline` with Ray Data: the missing shards of a
  stage become a dataset of shard numbers, and ``map_batches`` hands them to an actor pool of a callable
  class that builds the stage's per-process state once per actor (the encoder of the ``embed`` stage, the
  FAISS index of flat candidates) and writes each shard atomically. Every shard is computed by the same code
  as in `LocalEngine`, so both engines write the same bits; finished shards are skipped on rerun, and Ray
  retries the shards of an actor that dies.
* `encode_dataset` adds ``embedding`` / ``n_tokens`` / ``truncated`` columns to a ``ray.data.Dataset`` with
  ``map_batches`` over an actor pool that loads the encoder once per actor (``num_gpus`` per actor on GPU
  clusters).
* `dedup_dataset` deduplicates a ``ray.data.Dataset`` of documents with the staged pipeline on Ray.
* `encode_corpus` encodes a corpus of any format the toolkit reads (`reformer_retrieval.ray_read.read_corpus`:
  Parquet, JSON Lines, CSV, plain or compressed, dotted column names) into an embeddings file.

Where the work lies: band grouping is a shuffle through Parquet (each ``bands`` shard is written sorted by
candidate partition with one row group per partition, each ``candidates`` task reads its partition from
every shard by a filtered read), not Ray's ``groupby``, because it must give the same edges as the local
engine and resume per shard. The ``components`` stage runs by default as one task on one worker, which
reads every verified edge (memory O(edges) on that worker; the edges are not gathered through the driver,
but they must fit one machine); ``components_mode="rounds"`` runs large-star / small-star rounds over edge
partitions instead (`reformer_retrieval.pipeline.star_rounds`), with the same clusters.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from reformer_retrieval.corpus_formats import first_line
from reformer_retrieval.pipeline.runner import ShardTask

__all__ = ["RayEngine", "dedup_dataset", "encode_corpus", "encode_dataset", "init_ray", "require_ray"]


def require_ray() -> Any:
    """Import ``ray`` (and ``ray.data``), or raise a one-line error saying how to install it."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise RuntimeError("the Ray engine needs Ray Data: pip install 'reformer-retrieval[ray]'") from None
    return ray


def init_ray(address: str | None = None, num_cpus: int | None = None) -> Any:
    """Connect to the Ray cluster at ``address`` (e.g. ``"auto"`` or ``"ray://head:10001"``), or start a local one.

    Does nothing when Ray is already initialised in this process. Returns the ``ray`` module.
    """
    ray = require_ray()
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if address is not None:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=num_cpus, **kwargs)
    return ray


def _run_shards(batch: dict[str, np.ndarray], task: ShardTask, stage_dir: str) -> dict[str, np.ndarray]:
    """``map_batches`` function of stateless stages: Ray tasks on pooled worker processes.

    Bad input (a `CorpusError` or another ``ValueError`` / ``OSError`` of a shard) comes back as the one-line
    ``error`` of that shard instead of an exception, which Ray would wrap in its own types and tracebacks.
    """
    rows, errors = [], []
    for i in batch["shard"]:
        try:
            rows.append(int(task.run_and_write(stage_dir, int(i))["rows"]))
            errors.append("")
        except (ValueError, OSError) as exc:
            rows.append(-1)
            errors.append(first_line(exc))
    return {"shard": np.asarray(batch["shard"], np.int64), "rows": np.asarray(rows, np.int64),
            "error": np.asarray(errors, dtype=object)}


class _ShardActor:
    """Callable class of ``map_batches`` for stateful stages: sets the task up once per actor."""

    def __init__(self, task: ShardTask, stage_dir: str) -> None:
        self.task, self.stage_dir = task, stage_dir
        self.task.setup()
        self.task._ready = True

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return _run_shards(batch, self.task, self.stage_dir)


class RayEngine:
    """Runs stage shards with Ray Data.

    Stages with per-process state (``embed``: the encoder; flat ``candidates``: the FAISS index) run on an
    actor pool of a callable class (``ActorPoolStrategy``) that builds it once per actor; the others run as
    Ray tasks (``TaskPoolStrategy``), which reuse Ray's pooled worker processes from stage to stage.

    Args:
        address: Ray cluster address (None: the running instance, else a new local one on this machine's cores).
        concurrency: Actors / parallel tasks per stage (default: the cluster's CPUs, at most the shard count).
        gpus_per_actor: GPUs per actor of the ``embed`` stage (0: CPU actors).
        num_cpus: CPUs of a new local instance (None: all).
    """

    name = "ray"

    def __init__(self, address: str | None = None, concurrency: int | None = None, gpus_per_actor: float = 0.0,
                 num_cpus: int | None = None) -> None:
        if gpus_per_actor < 0:
            raise ValueError(f"gpus_per_actor must be >= 0, got {gpus_per_actor}")
        self.address, self.concurrency, self.gpus_per_actor, self.num_cpus = address, concurrency, gpus_per_actor, num_cpus

    def run(self, task: ShardTask, stage_dir: Path, shards: Sequence[int], show_progress: bool) -> None:
        """Run ``task`` for ``shards`` (see `reformer_retrieval.pipeline.runner.Engine`)."""
        ray = init_ray(self.address, self.num_cpus)
        if not show_progress:
            logging.getLogger("ray.data").setLevel(logging.WARNING)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        workers = max(1, min(len(shards), self.concurrency or cpus))
        ray.data.DataContext.get_current().enable_progress_bars = bool(show_progress)
        ds = ray.data.from_items([{"shard": int(i)} for i in shards], override_num_blocks=len(shards))
        if task.stateful:
            gpus = self.gpus_per_actor if task.name == "embed" else 0.0
            out = ds.map_batches(
                _ShardActor, fn_constructor_args=(task, str(stage_dir)), batch_size=1,
                compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=1, num_gpus=gpus or None,
            )
        else:
            out = ds.map_batches(_run_shards, fn_kwargs={"task": task, "stage_dir": str(stage_dir)}, batch_size=1,
                                 compute=ray.data.TaskPoolStrategy(size=workers), num_cpus=1)
        done = out.take_all()
        failed = [d for d in done if d["error"]]
        if failed:
            from reformer_retrieval.corpus import CorpusError

            raise CorpusError(f"stage {task.name}, shard {failed[0]['shard']}: {failed[0]['error']}")
        if len(done) != len(shards):
            raise RuntimeError(f"stage {task.name}: Ray returned {len(done)} of {len(shards)} shards")


# ------------------------------------------------------------------------------------------- encoding
class _EncodeBatch:
    """Callable class of `encode_dataset`: loads the encoder once per actor."""

    def __init__(self, model: str | None, text_column: str, device: str, encoder_options: dict[str, Any]) -> None:
        from reformer_retrieval.encode import Encoder

        self.encoder = Encoder.load(model, device=device, **encoder_options)
        self.text_column = text_column

    def __call__(self, batch: pa.Table) -> pa.Table:
        from reformer_retrieval.corpus import _text_problem

        if self.text_column not in batch.column_names:
            have = ", ".join(repr(c) for c in batch.column_names)
            raise ValueError(f"encode_dataset: no text column {self.text_column!r}; the dataset has columns: {have}")
        texts = batch.column(self.text_column).to_pylist()
        ok = [_text_problem(t) is None for t in texts]
        good = [t.decode("utf-8") if isinstance(t, bytes) else t for t, k in zip(texts, ok) if k]
        dim = self.encoder.dim
        vectors = np.zeros((len(texts), dim), np.float32)
        n_tokens = np.zeros(len(texts), np.int32)
        truncated = np.zeros(len(texts), bool)
        if good:
            v, n, t = self.encoder.encode_with_info(good)
            idx = np.flatnonzero(ok)
            vectors[idx], n_tokens[idx], truncated[idx] = v, n, t
        mask = None if all(ok) else pa.array([not k for k in ok])
        emb = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim, mask=mask)
        return (batch.append_column("embedding", emb).append_column("n_tokens", pa.array(n_tokens))
                .append_column("truncated", pa.array(truncated)))


def encode_dataset(
    ds: Any,
    model: str | os.PathLike[str] | None = None,
    text_column: str = "text",
    device: str = "cpu",
    concurrency: int | None = None,
    num_gpus: float = 0.0,
    batch_size: int = 256,
    **encoder_options: Any,
) -> Any:
    """A ``ray.data.Dataset`` like ``ds`` plus ``embedding`` (float32 x dim), ``n_tokens`` and ``truncated``.

    Each batch of ``batch_size`` rows is encoded by `Encoder.encode_with_info` in an actor that loaded the
    encoder once (``concurrency`` actors; default: the cluster's CPUs divided among them; ``num_gpus`` per
    actor with ``device="cuda"``). A row's vector is the same bits as ``Encoder.encode`` gives it in the same
    batch on the same device. Rows whose text is null, empty, whitespace-only or not UTF-8 get a null
    ``embedding`` and ``n_tokens`` 0.

    Ray gives each actor whole blocks of ``ds``: a dataset of one large block is encoded by one actor. With
    the default ``concurrency`` the actors hold every CPU, so the tasks that make ``ds`` must reserve none
    (``ray.data.read_parquet(..., num_cpus=0)``; `reformer_retrieval.ray_read.read_corpus` with
    ``num_cpus=0`` and ``rows_per_block=batch_size`` does both) or they wait for a CPU forever.

    Example:
        >>> import ray                                                                  # doctest: +SKIP
        >>> ds = ray.data.read_parquet("s3://bucket/corpus/")                           # doctest: +SKIP
        >>> encode_dataset(ds, model="my_model/").write_parquet("s3://bucket/emb/")      # doctest: +SKIP

    Args:
        ds: The documents (any columns; ``text_column`` holds the text).
        model: Model directory (None: the bundled default model); it must be readable on every worker.
        text_column: Column holding the text.
        device: ``"cpu"`` or ``"cuda"`` (with ``num_gpus`` > 0).
        concurrency: Number of encoder actors.
        num_gpus: GPUs per actor.
        batch_size: Rows per encoder call.
        encoder_options: Further `Encoder.load` arguments (``dtype``, ``batch_tokens``, ``max_tokens``, ``long_docs``).
    """
    ray = require_ray()
    if concurrency is None:
        concurrency = max(1, int(ray.cluster_resources().get("CPU", 1)) if ray.is_initialized() else 1)
    return ds.map_batches(
        _EncodeBatch, fn_constructor_args=(None if model is None else str(model), text_column, device, encoder_options),
        batch_format="pyarrow", batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=concurrency),
        num_gpus=num_gpus or None,
        num_cpus=1,
    )


def dedup_dataset(
    ds: Any,
    out_dir: str | os.PathLike[str],
    method: str = "minhash",
    id_column: str = "id",
    text_column: str = "text",
    engine: RayEngine | None = None,
    **kwargs: Any,
) -> Any:
    """Deduplicate the documents of a ``ray.data.Dataset`` with the staged pipeline on Ray.

    The ``id_column`` / ``text_column`` columns are written to ``out_dir/input/`` (Parquet, by Ray, files of at
    least ``shard_rows`` rows), then
    `reformer_retrieval.pipeline.dedup_pipeline` runs on them with a `RayEngine`; other keyword arguments go
    to it. Returns the `DedupResult` (``clusters.parquet``, ``pairs.parquet``, ``summary.json`` are in
    ``out_dir``; ``ray.data.read_parquet(out_dir + "/clusters.parquet")`` reads the clusters back into Ray).
    A rerun with the same ``out_dir`` reuses ``input/`` and the finished stages.
    """
    from reformer_retrieval.pipeline import dedup_pipeline
    from reformer_retrieval.pipeline.read import DEFAULT_SHARD_ROWS

    require_ray()
    out = Path(out_dir)
    missing = [c for c in (id_column, text_column) if c not in ds.schema().names]
    if missing:
        raise ValueError(f"dedup_dataset: the dataset has no column {missing[0]!r} (it has {ds.schema().names})")
    source = out / "input"
    if not (source / "_SUCCESS").is_file():
        rows = int(kwargs.get("shard_rows", DEFAULT_SHARD_ROWS))
        ds.select_columns([id_column, text_column]).write_parquet(str(source), min_rows_per_file=rows)
        (source / "_SUCCESS").write_text("")
    return dedup_pipeline(source, out, method=method, engine=engine or RayEngine(), id_column=id_column,
                          text_column=text_column, **kwargs)


def encode_corpus(
    corpus: str | os.PathLike[str],
    output: str | os.PathLike[str],
    model: str | os.PathLike[str] | None = None,
    id_column: str = "id",
    text_column: str = "text",
    device: str = "cpu",
    address: str | None = None,
    actors: int | None = None,
    gpus_per_actor: float = 0.0,
    on_duplicate: str = "error",
    batch_size: int = 256,
    **encoder_options: Any,
) -> list[str]:
    """Encode a corpus on Ray into an embeddings file (the format of `Encoder.encode_parquet`).

    The corpus is anything `Encoder.encode_parquet` reads (Parquet, JSON Lines and CSV files, plain or
    compressed; a directory, a glob, a ``file://`` URI; dotted column names), read on Ray by
    `reformer_retrieval.ray_read.read_corpus` -> `encode_dataset` -> rows streamed back in corpus order to an
    `EmbeddingWriter` on the driver (written atomically). Rows with a null id or an unusable text go to
    ``<output stem>.skipped.parquet`` (``file`` and ``row``: the file holding the row and its position in
    it); a repeated id raises (``on_duplicate="error"``) or is skipped (``"keep_first"``). Vectors equal
    ``Encoder.encode`` of the same batches bit for bit; against `Encoder.encode_parquet`, whose batches
    differ, they agree to float32 rounding (about 1e-7). A shard that cannot be read is a one-line
    `CorpusError` naming its file. Returns the summary lines.
    """
    import time

    from reformer_retrieval.corpus import (
        REASON_DUPLICATE,
        REASON_NULL_ID,
        CorpusError,
        EmbeddingWriter,
        SkippedRecord,
        SkipReport,
        _text_problem,
    )
    from reformer_retrieval.encode import default_skipped_path, model_identity
    from reformer_retrieval.pipeline.sketch import to_matrix
    from reformer_retrieval.ray_read import CorpusDatasource, corpus_error_of

    if on_duplicate not in ("error", "keep_first"):
        raise ValueError(f"on_duplicate={on_duplicate!r}: must be 'error' or 'keep_first'")
    start = time.perf_counter()
    ray = init_ray(address)
    source = CorpusDatasource(corpus, id_column, text_column)  # checks every file's columns
    dim, model_id = model_identity(model, encoder_options.get("channels") or "both")  # no model load here
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    # Read tasks reserve no CPU: the encoder actors take every CPU by default, and a read task waiting for
    # one would wait forever (reads are light next to encoding; Ray Data's backpressure bounds them).
    # Blocks of about batch_size rows: Ray gives an actor whole blocks, so every actor gets work from one shard.
    ds = ray.data.read_datasource(source, override_num_blocks=source.num_blocks(batch_size), num_cpus=0)
    encoded = encode_dataset(ds, model=model, text_column=text_column, device=device, concurrency=actors,
                             num_gpus=gpus_per_actor, batch_size=batch_size, **encoder_options)
    shard_starts = np.array([s.start for s in source.shards], np.int64)
    file_start: dict[str, int] = {}
    for s in source.shards:
        file_start.setdefault(s.path, s.start)

    def where(position: int) -> tuple[str, int]:
        """(file, row in the file) of corpus row ``position``."""
        path = source.shards[int(np.searchsorted(shard_starts, position, side="right")) - 1].path
        return path, position - file_start[path]

    report = SkipReport()
    seen: dict[Any, int] = {}
    position = docs = tokens = 0
    with EmbeddingWriter(output, dim, model_id, source.id_kind) as writer:  # type: ignore[arg-type]
        try:
            for batch in encoded.iter_batches(batch_format="pyarrow", batch_size=None):
                ids = batch.column(id_column).to_pylist()
                texts = batch.column(text_column).to_pylist()
                keep = []
                for offset, (doc_id, text) in enumerate(zip(ids, texts)):
                    reason = REASON_NULL_ID if doc_id is None else _text_problem(text)
                    if reason is None and doc_id in seen:
                        first, here = where(seen[doc_id]), where(position + offset)
                        if on_duplicate == "error":
                            raise CorpusError(f"duplicate id {doc_id!r}: {first[0]} row {first[1]} and {here[0]} "
                                              f"row {here[1]} (ids must be unique; keep the first with "
                                              "on_duplicate='keep_first')")
                        reason = f"{REASON_DUPLICATE} (kept {first[0]} row {first[1]})"
                    if reason is not None:
                        report.add([SkippedRecord(doc_id, reason, *where(position + offset))])
                        continue
                    seen[doc_id] = position + offset
                    keep.append(offset)
                position += batch.num_rows
                if keep:
                    rows = batch.take(pa.array(keep, pa.int64()))
                    writer.write(rows.column(id_column).to_pylist(),
                                 to_matrix(rows.column("embedding"), np.float32), rows.column("n_tokens").to_numpy(),
                                 rows.column("truncated").to_numpy(zero_copy_only=False))
                    docs += len(keep)
                    tokens += int(_sum(rows.column("n_tokens")))
        except Exception as exc:
            if type(exc) is CorpusError:  # raised here, on the driver
                raise
            error = corpus_error_of(exc)  # raised by a read task, wrapped by Ray
            if error is None:
                raise
            raise error from None
    skipped_path = default_skipped_path(output)
    if len(report):
        report.write(skipped_path, source.id_kind)  # type: ignore[arg-type]
    seconds = time.perf_counter() - start
    lines = [f"encoded {docs:,} documents ({tokens:,} tokens) on Ray in {seconds:.1f} s -> {output}"]
    if len(report):
        lines.append(f"{report.summary()}; listed in {skipped_path}")
    return lines


def _sum(column: Any) -> int:
    """Sum of an integer Arrow column (0 when empty)."""
    import pyarrow.compute as pc

    value = pc.sum(column).as_py()
    return int(value or 0)
