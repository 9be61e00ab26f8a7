"""Stage ``read``: a corpus -> shards of ``row`` (int64 row id), ``id``, ``text``, ``length``, ``skip_reason``.

The corpus is a file, a directory of shards (hive partitions too; hidden and ``_``-prefixed entries
ignored), a glob, or a URI: local sources hold Parquet, JSON Lines or CSV files (plain or compressed, as
`reformer_retrieval.corpus_formats` reads them), other filesystems pyarrow has (``s3://``, ``gs://``) Parquet
files found by ``pyarrow.dataset``. Files are taken in sorted path order; Parquet files are cut at
row-group boundaries into shards of about ``shard_rows`` rows, a JSON Lines / CSV file is one shard. A
row's id is its position in the corpus (Parquet offsets come from the footers, so every shard knows its
rows without reading the others; a JSON Lines / CSV file is counted once when the run is planned). The id table (``row`` -> ``id``) is the
``row``/``id`` columns of this stage's output.

Rows with a null id or a null / empty / whitespace-only / non-UTF-8 text are kept with their
``skip_reason`` (never silently dropped; the final stage lists them in ``skipped.parquet``); the other
stages read only rows whose ``skip_reason`` is null. `check_unique_ids` refuses repeated ids, naming one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from reformer_retrieval.corpus import (
    REASON_NULL_ID,
    CorpusError,
    _text_problem,
    check_columns,
)
from reformer_retrieval.corpus_formats import (
    count_file_rows,
    detect_format,
    read_file_schema,
    resolve_field,
    resolve_sources,
    scan_file,
)
from reformer_retrieval.corpus_formats import first_line as _first_line
from reformer_retrieval.pipeline.runner import ShardTask, StageInfo

__all__ = ["ReadTask", "ShardSpec", "check_unique_ids", "open_corpus", "plan_shards", "read_shard",
           "read_stage_columns"]

DEFAULT_SHARD_ROWS = 65_536


@dataclass(frozen=True)
class ShardSpec:
    """Rows of one read shard: row groups ``row_groups`` of ``path`` holding rows ``start..start+rows-1``."""

    path: str
    row_groups: tuple[int, ...]
    start: int
    rows: int


def open_corpus(source: str | os.PathLike[str]) -> tuple[pafs.FileSystem, list[str]]:
    """The filesystem and the sorted corpus file paths of ``source``.

    Local sources (a path, a glob, a ``file://`` URI) go through
    `reformer_retrieval.corpus_formats.resolve_sources` (Parquet, JSON Lines and CSV files; hidden and
    ``_``-prefixed entries of a directory ignored); other URIs (``s3://``, ``gs://``, ...) through
    ``pyarrow.dataset`` discovery of their Parquet files (hive partitions included).
    """
    text = os.fspath(source)
    if "://" not in text or text.startswith("file://"):
        return pafs.LocalFileSystem(), [str(p.absolute()) for p in resolve_sources(text)]
    try:
        fs, root = pafs.FileSystem.from_uri(text)
    except (pa.ArrowException, ValueError) as exc:
        raise CorpusError(f"{text}: cannot open ({_first_line(exc)})") from None
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise CorpusError(f"corpus {text}: no such file or directory")
    if info.type == pafs.FileType.File:
        return fs, [root]
    try:
        dataset = pads.dataset(root, filesystem=fs, format="parquet", partitioning="hive",
                               exclude_invalid_files=False)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise CorpusError(f"corpus directory {text}: {_first_line(exc)}") from None
    files = sorted(f for f in dataset.files if f.endswith(".parquet"))
    if not files:
        raise CorpusError(f"corpus directory {text} holds no *.parquet file")
    return fs, files


def _is_parquet(fs: pafs.FileSystem, path: str) -> bool:
    if not isinstance(fs, pafs.LocalFileSystem):
        return True  # remote sources: Parquet only (see open_corpus)
    return detect_format(path).kind == "parquet"


def plan_shards(
    source: str | os.PathLike[str], id_column: str, text_column: str, shard_rows: int = DEFAULT_SHARD_ROWS
) -> tuple[pafs.FileSystem, list[ShardSpec], str]:
    """Cut the corpus into shards from the Parquet footers alone; returns (filesystem, shards, id kind).

    Every file's columns are checked first (`CorpusError` naming the file and column).
    """
    if shard_rows < 1:
        raise ValueError(f"shard_rows must be positive, got {shard_rows}")
    fs, files = open_corpus(source)
    fmt = pads.ParquetFileFormat()
    shards: list[ShardSpec] = []
    offset = 0
    id_kind = None
    for path in files:
        if not _is_parquet(fs, path):
            schema = read_file_schema(path)
            if schema is None:  # an empty JSON Lines / CSV file
                continue
            id_kind = _same_kind(path, check_columns(path, schema, id_column, text_column), id_kind, id_column)
            rows = count_file_rows(path)
            if rows:
                shards.append(ShardSpec(path, (), offset, rows))
                offset += rows
            continue
        try:
            fragment = fmt.make_fragment(path, filesystem=fs)
            metadata = fragment.metadata
            schema = fragment.physical_schema
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise CorpusError(f"{path}: not a readable Parquet file ({_first_line(exc)})") from None
        id_kind = _same_kind(path, check_columns(path, schema, id_column, text_column), id_kind, id_column)
        groups: list[int] = []
        rows = 0
        for g in range(metadata.num_row_groups):
            groups.append(g)
            rows += metadata.row_group(g).num_rows
            if rows >= shard_rows:
                shards.append(ShardSpec(path, tuple(groups), offset, rows))
                offset += rows
                groups, rows = [], 0
        if groups and rows:
            shards.append(ShardSpec(path, tuple(groups), offset, rows))
            offset += rows
    if not shards:  # no rows at all: one empty shard, so every later stage has a (typed, empty) input
        shards.append(ShardSpec(files[0], (), 0, 0))
    return fs, shards, id_kind or "str"


def _same_kind(path: str, kind: str, id_kind: str | None, id_column: str) -> str:
    """``kind``, after checking that it is the id kind of the earlier files (``id_kind``, None for the first)."""
    if id_kind is not None and kind != id_kind:
        raise CorpusError(f"{path}: id column {id_column!r} holds {kind} ids but earlier files hold {id_kind} ids")
    return kind


def read_shard(spec: ShardSpec, filesystem: pafs.FileSystem, id_column: str, text_column: str) -> pa.Table:
    """The raw ``id`` and ``text`` columns of one planned shard, in corpus order.

    Parquet row groups are read through ``pyarrow.dataset`` (only the two columns), a JSON Lines / CSV file
    through `reformer_retrieval.corpus_formats.scan_file` (CSV values as written, JSON with the types of
    its first block); dotted column names reach into nested records in every format.

    Raises:
        CorpusError: one line naming the file, when it cannot be read or no longer holds ``spec.rows`` rows.
    """
    columns = {"id": id_column, "text": text_column}
    if spec.rows == 0:
        return pa.table({"id": pa.array([], pa.string()), "text": pa.array([], pa.string())})
    if not spec.row_groups:  # a JSON Lines / CSV file, whole
        batches = list(scan_file(spec.path, columns, batch_size=65_536))
        table = pa.Table.from_batches(batches) if batches else pa.table({"id": [], "text": []})
    else:
        try:
            fragment = pads.ParquetFileFormat().make_fragment(spec.path, filesystem=filesystem,
                                                             row_groups=list(spec.row_groups))
            projection = {}
            for out_name, name in columns.items():
                found = resolve_field(fragment.physical_schema, name)
                if found is None:
                    raise CorpusError(f"{spec.path}: no column {name!r} (the file changed during the run?)")
                projection[out_name] = found[0]
            table = fragment.to_table(columns=projection)
        except (pa.ArrowException, OSError) as exc:
            raise CorpusError(f"{spec.path}: cannot read row groups {list(spec.row_groups)} "
                              f"({_first_line(exc)})") from None
    if table.num_rows != spec.rows:
        where = f"in row groups {list(spec.row_groups)}" if spec.row_groups else "in all"
        raise CorpusError(f"{spec.path}: holds {table.num_rows} rows {where}, it held {spec.rows} when the run "
                          "was planned (the file changed during the run?)")
    return table


def read_stage_columns(id_kind: str) -> pa.Schema:
    """Schema of the read stage's shards."""
    return pa.schema([("row", pa.int64()), ("id", pa.int64() if id_kind == "int" else pa.string()),
                      ("text", pa.string()), ("length", pa.int64()), ("skip_reason", pa.string())])


class ReadTask(ShardTask):
    """Reads one `ShardSpec` per shard; see the module docstring."""

    name = "read"

    def __init__(self, source: str | os.PathLike[str], id_column: str = "id", text_column: str = "text",
                 shard_rows: int = DEFAULT_SHARD_ROWS) -> None:
        self.source, self.id_column, self.text_column = os.fspath(source), id_column, text_column
        self.shard_rows = int(shard_rows)
        self.filesystem, self.shards, self.id_kind = plan_shards(source, id_column, text_column, shard_rows)

    def n_shards(self) -> int:
        """One per planned shard."""
        return len(self.shards)

    def settings(self) -> dict[str, Any]:
        """The shard plan, the columns, and each file's size and modification time (a changed file is read again)."""
        paths = sorted({s.path for s in self.shards})
        stamps = [(i.size, i.mtime_ns) for i in self.filesystem.get_file_info(paths)]
        return {"columns": [self.id_column, self.text_column], "id_kind": self.id_kind,
                "shards": [(s.path, list(s.row_groups), s.start, s.rows) for s in self.shards],
                "files": dict(zip(paths, stamps))}

    def run(self, index: int) -> tuple[pa.Table, dict[str, Any]]:
        """Rows of shard ``index`` with their row ids and skip reasons."""
        spec = self.shards[index]
        if spec.rows == 0:
            empty = read_stage_columns(self.id_kind).empty_table()
            return empty, {"start": 0, "stop": 0, "file": spec.path, "skipped": 0}
        table = read_shard(spec, self.filesystem, self.id_column, self.text_column)
        ids = table.column("id").to_pylist()
        texts = table.column("text").to_pylist()
        reasons: list[str | None] = []
        clean: list[str | None] = []
        for doc_id, text in zip(ids, texts):
            reason = REASON_NULL_ID if doc_id is None else _text_problem(text)
            if reason is None and isinstance(text, bytes):
                text = text.decode("utf-8")
            reasons.append(reason)
            clean.append(text if reason is None else None)
        lengths = [len(t) if t is not None else 0 for t in clean]
        rows = np.arange(spec.start, spec.start + spec.rows, dtype=np.int64)
        out = pa.table([pa.array(rows), pa.array(ids, read_stage_columns(self.id_kind).field("id").type),
                        pa.array(clean, pa.string()), pa.array(lengths, pa.int64()), pa.array(reasons, pa.string())],
                       schema=read_stage_columns(self.id_kind))
        return out, {"start": spec.start, "stop": spec.start + spec.rows, "file": spec.path,
                     "skipped": int(sum(r is not None for r in reasons))}


def check_unique_ids(read: StageInfo) -> None:
    """Raise `CorpusError` naming a repeated id (and its two row ids) if the corpus has one."""
    table = pads.dataset([str(p) for p in read.paths], format="parquet").to_table(
        columns=["row", "id"], filter=pc.field("skip_reason").is_null())
    if table.num_rows == 0:
        return
    if pc.count_distinct(table.column("id")).as_py() == table.num_rows:
        return
    counts = pc.value_counts(table.column("id"))
    repeated = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))[0]
    rows = pc.filter(table.column("row"), pc.equal(table.column("id"), repeated)).to_pylist()
    raise CorpusError(f"duplicate id {repeated.as_py()!r}: corpus rows {rows[0]} and {rows[1]} (ids must be unique)")
