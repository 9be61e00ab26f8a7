"""A corpus as a ``ray.data.Dataset``: every format the toolkit reads, the local engine's rows in its order.

`read_corpus` is a Ray Data datasource (``ray.data.read_datasource``) over the ``read`` stage's shard plan
(`reformer_retrieval.pipeline.read.plan_shards`): each Parquet shard (row groups) or JSON Lines / CSV file
is one read task, and each task reads its rows with `reformer_retrieval.pipeline.read.read_shard`, the
function the local engine's ``read`` stage uses. Ray's own ``read_json`` / ``read_csv`` / ``read_parquet``
would not give the same rows: they infer a CSV id ``007`` as the integer 7 (the toolkit reads CSV values as
written), infer JSON types per file rather than from the first block, know compression only by file name,
need one reader per format (a directory may mix them), and do not follow dotted column names into nested
records.

Import this module only with the ``ray`` extra installed (``pip install 'reformer-retrieval[ray]'``).
"""

from __future__ import annotations

import os
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import ray.data
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from reformer_retrieval.corpus import CorpusError
from reformer_retrieval.corpus_formats import first_line
from reformer_retrieval.pipeline.read import DEFAULT_SHARD_ROWS, ShardSpec, plan_shards, read_shard

__all__ = ["CorpusDatasource", "corpus_error_of", "read_corpus"]


def _read_one(spec: ShardSpec, filesystem: pafs.FileSystem, id_column: str, text_column: str) -> list[pa.Table]:
    """One read task: the shard's rows, columns named ``id_column`` and ``text_column``."""
    return [read_shard(spec, filesystem, id_column, text_column).rename_columns([id_column, text_column])]


class CorpusDatasource(Datasource):
    """Ray Data datasource of a corpus's ``id_column`` and ``text_column``, one read task per shard.

    The corpus is planned (files listed, every file's columns checked) when the datasource is built, so a
    missing column or an unreadable file is a `CorpusError` naming the file before Ray starts any task.

    Attributes:
        shards: The planned shards, in corpus order.
        id_kind: ``"int"`` or ``"str"``.
    """

    def __init__(self, source: str | os.PathLike[str], id_column: str = "id", text_column: str = "text",
                 shard_rows: int = DEFAULT_SHARD_ROWS) -> None:
        super().__init__()
        if id_column == text_column:
            raise CorpusError(f"the id column and the text column are both {id_column!r}; they must differ")
        self.source, self.id_column, self.text_column = os.fspath(source), id_column, text_column
        self.filesystem, self.shards, self.id_kind = plan_shards(source, id_column, text_column, shard_rows)

    def estimate_inmemory_data_size(self) -> int | None:
        """Unknown before reading (Parquet footers give compressed sizes only)."""
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context: Any = None) -> list[ReadTask]:
        """One task per shard, whatever ``parallelism`` asks (shards are what the local engine reads)."""
        # the closures take these values, not self: each task carries its own spec, not the whole plan
        fs, id_column, text_column = self.filesystem, self.id_column, self.text_column
        tasks = []
        for spec in self.shards:
            meta = BlockMetadata(num_rows=spec.rows, size_bytes=None, input_files=[spec.path], exec_stats=None)
            tasks.append(ReadTask(lambda spec=spec: _read_one(spec, fs, id_column, text_column), meta))
        return tasks

    def num_blocks(self, rows_per_block: int | None = None) -> int:
        """Blocks to ask ``ray.data.read_datasource`` for (``override_num_blocks``): one per shard, or about
        ``rows_per_block`` rows each (Ray then splits each read task's output into equal parts)."""
        if rows_per_block is None:
            return len(self.shards)
        if rows_per_block < 1:
            raise ValueError(f"rows_per_block must be positive, got {rows_per_block}")
        rows = sum(s.rows for s in self.shards)
        return max(len(self.shards), -(-rows // rows_per_block))


def read_corpus(source: str | os.PathLike[str], id_column: str = "id", text_column: str = "text",
                shard_rows: int = DEFAULT_SHARD_ROWS, rows_per_block: int | None = None,
                num_cpus: float | None = None) -> Any:
    """A ``ray.data.Dataset`` of a corpus's two columns, the rows of the local engine in its order.

    ``source`` is anything the toolkit reads (a Parquet / JSON Lines / CSV file, plain or compressed; a
    directory of shards; a glob; a ``file://`` URI; an ``s3://`` / ``gs://`` directory of Parquet files);
    dotted names (``meta.id``) reach into nested records. The output columns are named ``id_column`` and
    ``text_column``. Iterate with ``DataContext.execution_options.preserve_order = True`` to get corpus
    order (Ray otherwise yields blocks as they finish).

    Ray hands a later actor pool (e.g. `reformer_retrieval.ray_engine.encode_dataset`) whole blocks, so give
    ``rows_per_block`` (e.g. its batch size) for every actor to get work from one shard (Ray cuts each
    shard's rows into about that many per block). ``num_cpus`` is what
    each read task reserves (Ray's default: 1); ``0`` lets reads run beside an actor pool that holds every
    CPU (with none free, a read task that needs one waits forever).

    Raises:
        CorpusError: when the corpus is planned: a missing column, a wrong type, an unreadable file (one
            line naming the file). A shard that fails later, while Ray reads it, raises Ray's error;
            `corpus_error_of` finds the one-line `CorpusError` in it.
    """
    datasource = CorpusDatasource(source, id_column, text_column, shard_rows)
    return ray.data.read_datasource(datasource, override_num_blocks=datasource.num_blocks(rows_per_block),
                                    num_cpus=num_cpus)


def corpus_error_of(exc: BaseException) -> CorpusError | None:
    """The `CorpusError` a Ray task raised, found in the chain of Ray's wrappers of it (None if none).

    Ray re-raises a task's exception on the driver as a ``RayTaskError`` that is also an instance of the
    original type but whose message is the worker's traceback; its ``cause`` is the original exception.
    """
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        cause = getattr(e, "cause", None)
        if isinstance(e, CorpusError) and not isinstance(cause, BaseException):
            return CorpusError(first_line(e))
        todo.extend([cause if isinstance(cause, BaseException) else None, e.__cause__, e.__context__])
    return None
