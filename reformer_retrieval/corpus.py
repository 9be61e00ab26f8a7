"""Corpus reading and embeddings Parquet I/O: streaming reads, schema checks, atomic writes.

Reading a corpus (`iter_batches`) goes file by file and record batch by record batch, reading only the id
and text columns (corpora are Parquet, JSON Lines or CSV, plain or compressed: see
`reformer_retrieval.corpus_formats`; every output is Parquet), so memory stays bounded whatever the corpus size (only the set of ids seen so far grows,
to check that ids are unique). Bad rows (null id, null / empty / whitespace-only / non-UTF-8 text, repeated
ids when the caller keeps the first) are never dropped silently: each one comes back as a `SkippedRecord`
naming the file, the row and the reason, and `SkipReport` collects them into ``*.skipped.parquet``.

Embeddings files follow ARCHITECTURE.md: columns ``id`` (string or int64), ``embedding``
(``fixed_size_list<float32>[dim]``), ``n_tokens`` (int32), ``truncated`` (bool), and file metadata
``model_id``, ``dim``, ``library_version``. Every write goes to a temporary file renamed on success.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from reformer_retrieval.atomic import atomic_path
from reformer_retrieval.corpus_formats import (
    CorpusError,
    count_file_rows,
    describe_columns,
    detect_format,
    read_file_schema,
    resolve_field,
    resolve_sources,
    scan_file,
)
from reformer_retrieval.corpus_formats import (
    first_line as _first_line,
)

__all__ = [
    "CHANNELS",
    "Channels",
    "CorpusError",
    "DocumentBatch",
    "DuplicateIdError",
    "EmbeddingTable",
    "EmbeddingWriter",
    "SkipReport",
    "SkippedRecord",
    "check_columns",
    "corpus_id_kind",
    "count_rows",
    "footer_row_count",
    "iter_batches",
    "iter_embeddings",
    "read_embeddings",
    "read_embeddings_metadata",
    "read_skipped",
    "read_texts",
    "resolve_sources",
    "split_model_id",
    "write_embeddings",
    "write_skipped",
]

IdKind = Literal["str", "int"]
Id = str | int

META_MODEL_ID = b"model_id"
META_DIM = b"dim"
META_VERSION = b"library_version"
META_FORMAT = b"format"
Channels = Literal["both", "contextual", "lexical"]
CHANNELS: tuple[str, ...] = ("both", "contextual", "lexical")
"""Values of ``Encoder(channels=...)`` and ``encode --channels``."""


def split_model_id(model_id: str | None) -> tuple[str | None, Channels]:
    """``(model's own id, channels)`` of an embeddings ``model_id`` (`Encoder.model_id`: ``"abc123def456"`` is
    both channels, ``"abc123def456:lexical"`` the lexical channel alone)."""
    if not model_id:
        return model_id, "both"
    base, _, suffix = model_id.partition(":")
    if suffix and suffix not in CHANNELS:
        raise ValueError(f"model_id {model_id!r}: unknown channels {suffix!r} (expected one of {', '.join(CHANNELS)})")
    return base, (suffix or "both")  # type: ignore[return-value]


META_CHANNELS = b"channels"
"""Which channels of the model the vectors hold: ``both``, ``contextual`` or ``lexical`` (also the suffix of a
single-channel ``model_id``, e.g. ``aaa7ca85767a:lexical``)."""
EMBEDDINGS_FORMAT = b"reformer-retrieval/embeddings/1"
EMBEDDING_COLUMNS = ("id", "embedding", "n_tokens", "truncated")

# Reasons a corpus row is skipped (the ``reason`` column of ``*.skipped.parquet``).
REASON_NULL_ID = "null id"
REASON_NULL_TEXT = "null text"
REASON_EMPTY_TEXT = "empty text"
REASON_BLANK_TEXT = "whitespace-only text"
REASON_INVALID_UTF8 = "text is not valid UTF-8"
REASON_DUPLICATE = "duplicate id"


class DuplicateIdError(CorpusError):
    """An id that appears twice in a corpus read with ``on_duplicate="error"``.

    ``str(err)`` suggests the Python argument; `cli_message` the command-line flag.
    """

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(f"{detail} (ids must be unique; keep the first with on_duplicate='keep_first')")

    def cli_message(self, has_flag: bool) -> str:
        """The message for the command line: the ``--on-duplicate keep_first`` flag of this command, or
        of ``encode`` when this command has none."""
        if has_flag:
            return f"{self.detail} (ids must be unique; keep the first with --on-duplicate keep_first)"
        return (
            f"{self.detail} (ids must be unique; `reformer-retrieval encode --on-duplicate keep_first` keeps "
            "the first and lists the others as skipped)"
        )


def open_parquet(path: str | os.PathLike[str]) -> pq.ParquetFile:
    """Open one Parquet file, turning any failure into a one-line `CorpusError` naming the file."""
    path = Path(path)
    try:
        return pq.ParquetFile(path)
    except FileNotFoundError:
        raise CorpusError(f"{path}: no such file") from None
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise CorpusError(f"{path}: not a readable Parquet file ({_first_line(exc)})") from None


def _first_schema(files: Sequence[Path]) -> tuple[Path, pa.Schema] | None:
    """The first file of a corpus that has a schema (empty JSON Lines / CSV files have none)."""
    for path in files:
        schema = read_file_schema(path)
        if schema is not None:
            return path, schema
    return None


def corpus_id_kind(
    src: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], id_column: str = "id", text_column: str = "text"
) -> IdKind:
    """``"int"`` or ``"str"``: the id kind of a corpus, from its first file's schema (columns checked)."""
    found = _first_schema(resolve_sources(src))
    return "str" if found is None else check_columns(found[0], found[1], id_column, text_column)


def count_rows(src: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> int:
    """Number of rows of a corpus: Parquet files from their footers, JSON Lines / CSV files read through."""
    return sum(count_file_rows(p) for p in resolve_sources(src))


def footer_row_count(src: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> int | None:
    """Number of rows of a corpus when its footers tell (all Parquet), else None; never reads data."""
    total = 0
    for path in resolve_sources(src):
        if detect_format(path).kind != "parquet":
            return None
        total += open_parquet(path).metadata.num_rows
    return total


def _value_type(t: pa.DataType) -> pa.DataType:
    return t.value_type if pa.types.is_dictionary(t) else t


def _is_string(t: pa.DataType) -> bool:
    t = _value_type(t)
    return pa.types.is_string(t) or pa.types.is_large_string(t) or getattr(pa.types, "is_string_view", lambda _t: False)(t)


def _is_binary(t: pa.DataType) -> bool:
    t = _value_type(t)
    return pa.types.is_binary(t) or pa.types.is_large_binary(t)


def check_columns(path: str | os.PathLike[str], schema: pa.Schema, id_column: str, text_column: str) -> IdKind:
    """``"int"`` or ``"str"``: the id kind of a corpus file, after checking that both columns exist (dotted
    names reach into nested records) and have usable types: ids integers or strings (not binary), text
    strings or binary UTF-8 (a JSON column that is null in its first block too).

    Raises:
        CorpusError: one line naming the file and the column.
    """
    types: dict[str, pa.DataType] = {}
    for column, role in ((id_column, "id"), (text_column, "text")):
        found = resolve_field(schema, column)
        if found is None:
            raise CorpusError(
                f"{path}: no {role} column {column!r}; the file has columns: {describe_columns(schema)}"
            )
        types[role] = found[1]
    id_type = types["id"]
    if pa.types.is_integer(_value_type(id_type)):
        kind: IdKind = "int"
    elif _is_string(id_type):
        kind = "str"
    else:
        raise CorpusError(
            f"{path}: id column {id_column!r} has type {id_type}; ids must be strings or integers"
        )
    text_type = types["text"]
    if not (_is_string(text_type) or _is_binary(text_type) or pa.types.is_null(text_type)):
        raise CorpusError(
            f"{path}: text column {text_column!r} has type {text_type}; it must hold strings"
        )
    return kind


# --------------------------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class SkippedRecord:
    """A corpus row that was not encoded, and why.

    Attributes:
        id: The row's id (``None`` when the id itself is null).
        reason: One of the ``REASON_*`` strings (a duplicate also names where the kept row is).
        file: The Parquet file holding the row.
        row: Row number inside that file (0-based).
    """

    id: Id | None
    reason: str
    file: str
    row: int


@dataclass
class DocumentBatch:
    """Consecutive rows of one corpus file: the documents to encode and the rows skipped among them.

    Attributes:
        ids: Document ids (str or int, as stored), unique across the corpus.
        texts: Document texts (non-empty str), aligned with ``ids``.
        skipped: Rows of this stretch that were skipped, in row order.
        source: The Parquet file the rows come from.
        rows: Row number (0-based, inside ``source``) of each document.
    """

    ids: list[Id]
    texts: list[str]
    skipped: list[SkippedRecord] = field(default_factory=list)
    source: Path | None = None
    rows: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)


def iter_batches(
    src: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    id_column: str = "id",
    text_column: str = "text",
    batch_size: int = 1024,
    on_duplicate: Literal["error", "keep_first"] = "error",
) -> Iterator[DocumentBatch]:
    """Stream a corpus (Parquet, JSON Lines or CSV) as `DocumentBatch` es of at most ``batch_size`` rows each.

    Only the two columns are read, one record batch at a time (`reformer_retrieval.corpus_formats.scan_file`); every file is checked before its rows are
    read (missing column, wrong type, unreadable file: `CorpusError`). Ids must be unique across the
    whole corpus and of one kind (all strings or all integers).

    Args:
        src: A corpus file, a directory of shards, a glob, a ``file://`` URI, or a list of these (see
            `resolve_sources`).
        id_column: Name of the id column (a dotted name reaches into nested records: ``meta.id``).
        text_column: Name of the text column (string, or binary holding UTF-8; dotted names too).
        batch_size: Rows read per batch (a batch holds at most this many documents + skipped rows).
        on_duplicate: ``"error"`` raises on a repeated id (naming it and both rows); ``"keep_first"``
            keeps the first valid row of each id and reports the others as skipped.

    Yields:
        Batches in file order, then row order; a batch may hold only skipped rows.
    """
    if on_duplicate not in ("error", "keep_first"):
        raise ValueError(f"on_duplicate={on_duplicate!r}: must be 'error' or 'keep_first'")
    if batch_size <= 0:
        raise ValueError(f"batch_size={batch_size}: must be positive")
    if id_column == text_column:
        raise CorpusError(f"the id column and the text column are both {id_column!r}; they must differ")
    files = resolve_sources(src)
    # id -> (file index << 41) | (row << 1) | emitted; one int per id keeps the set compact.
    seen: dict[Id, int] = {}
    id_kind: IdKind | None = None
    first_kind_file: Path | None = None
    for file_index, path in enumerate(files):
        fmt = detect_format(path)
        schema = read_file_schema(path, fmt)
        if schema is None:  # an empty JSON Lines / CSV file
            continue
        kind = check_columns(path, schema, id_column, text_column)
        if id_kind is None:
            id_kind, first_kind_file = kind, path
        elif kind != id_kind:
            raise CorpusError(
                f"{path}: id column {id_column!r} holds {kind} ids but {first_kind_file} holds {id_kind} ids"
            )
        row = 0
        columns = {"id": id_column, "text": text_column}
        for record_batch in scan_file(path, columns, batch_size=batch_size, fmt=fmt, schema=schema):
            ids = record_batch.column("id").to_pylist()
            texts = record_batch.column("text").to_pylist()
            out = DocumentBatch(ids=[], texts=[], skipped=[], source=path, rows=[])
            for offset, (doc_id, text) in enumerate(zip(ids, texts)):
                r = row + offset
                reason = _text_problem(text)
                if doc_id is None:
                    out.skipped.append(SkippedRecord(None, REASON_NULL_ID, str(path), r))
                    continue
                if isinstance(text, bytes) and reason is None:
                    text = text.decode("utf-8")
                prior = seen.get(doc_id)
                if prior is not None:
                    prior_file, prior_row, prior_emitted = prior >> 41, (prior >> 1) & ((1 << 40) - 1), prior & 1
                    where = f"{files[prior_file]} row {prior_row}"
                    if on_duplicate == "error":
                        raise DuplicateIdError(f"duplicate id {doc_id!r}: {where} and {path} row {r}")
                    if prior_emitted or reason is not None:
                        out.skipped.append(
                            SkippedRecord(doc_id, reason or f"{REASON_DUPLICATE} (kept {where})", str(path), r)
                        )
                        continue
                if reason is not None:
                    if prior is None:
                        seen[doc_id] = (file_index << 41) | (r << 1)
                    out.skipped.append(SkippedRecord(doc_id, reason, str(path), r))
                    continue
                seen[doc_id] = (file_index << 41) | (r << 1) | 1
                out.ids.append(doc_id)
                out.texts.append(text)
                out.rows.append(r)
            row += record_batch.num_rows
            if out.ids or out.skipped:
                yield out


def read_texts(
    src: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    id_column: str = "id",
    text_column: str = "text",
    on_duplicate: Literal["error", "keep_first"] = "error",
) -> tuple[list[Id], list[str], list[SkippedRecord]]:
    """Every document of a corpus (Parquet, JSON Lines or CSV) in memory: ``(ids, texts, skipped rows)``.

    Reads with `iter_batches` (same arguments, same checks and errors); use that to stream a corpus too
    large to hold.
    """
    ids: list[Id] = []
    texts: list[str] = []
    skipped: list[SkippedRecord] = []
    for batch in iter_batches(src, id_column, text_column, on_duplicate=on_duplicate):
        ids.extend(batch.ids)
        texts.extend(batch.texts)
        skipped.extend(batch.skipped)
    return ids, texts, skipped


def _text_problem(text: Any) -> str | None:
    """Why a text value cannot be encoded (``None`` if it can)."""
    if text is None:
        return REASON_NULL_TEXT
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            return REASON_INVALID_UTF8
    if not text:
        return REASON_EMPTY_TEXT
    if text.isspace():
        return REASON_BLANK_TEXT
    return None


# --------------------------------------------------------------------------------------------- skipped rows
_SKIPPED_EXTRA = ("reason", "file", "row")


def _id_type(kind: IdKind | None) -> pa.DataType:
    return pa.int64() if kind == "int" else pa.string()


def write_skipped(path: str | os.PathLike[str], records: Iterable[SkippedRecord], id_kind: IdKind | None = None) -> Path:
    """Write skipped rows to a Parquet file (``id``, ``reason``, ``file``, ``row``) atomically."""
    records = list(records)
    if id_kind is None:
        id_kind = _ids_kind([r.id for r in records if r.id is not None], what=str(path)) if records else "str"
    table = pa.table(
        {
            "id": pa.array([r.id for r in records], type=_id_type(id_kind)),
            "reason": pa.array([r.reason for r in records], type=pa.string()),
            "file": pa.array([r.file for r in records], type=pa.string()),
            "row": pa.array([r.row for r in records], type=pa.int64()),
        }
    )
    path = Path(path)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return path


def read_skipped(path: str | os.PathLike[str]) -> list[SkippedRecord]:
    """Read a file written by `write_skipped`."""
    path = Path(path)
    table = _read_table(path)
    missing = [c for c in ("id", *_SKIPPED_EXTRA) if c not in table.column_names]
    if missing:
        raise CorpusError(f"{path}: not a skipped-rows file (missing columns {', '.join(missing)})")
    cols = [table.column(c).to_pylist() for c in ("id", *_SKIPPED_EXTRA)]
    return [SkippedRecord(*values) for values in zip(*cols)]


class SkipReport:
    """Collects skipped rows over a whole run; `summary` gives the one-line count shown on screen."""

    def __init__(self, records: Iterable[SkippedRecord] = ()) -> None:
        self.records: list[SkippedRecord] = list(records)

    def add(self, records: Iterable[SkippedRecord]) -> None:
        """Append records (e.g. ``batch.skipped``)."""
        self.records.extend(records)

    def __len__(self) -> int:
        return len(self.records)

    def counts(self) -> dict[str, int]:
        """Number of skipped rows per reason (duplicates grouped under ``duplicate id``)."""
        return dict(Counter(r.reason.split(" (", 1)[0] for r in self.records))

    def summary(self) -> str:
        """E.g. ``"3 rows skipped (2 null text, 1 empty text)"``, or ``"no rows skipped"``."""
        if not self.records:
            return "no rows skipped"
        parts = ", ".join(f"{n} {reason}" for reason, n in sorted(self.counts().items()))
        return f"{len(self.records)} row{'s' if len(self.records) != 1 else ''} skipped ({parts})"

    def write(self, path: str | os.PathLike[str], id_kind: IdKind | None = None) -> Path:
        """Write every record to ``path`` (see `write_skipped`)."""
        return write_skipped(path, self.records, id_kind)


# --------------------------------------------------------------------------------------------- embeddings
@dataclass
class EmbeddingTable:
    """The contents of an embeddings file.

    Attributes:
        ids: Document ids (str or int, as stored).
        vectors: float32 array (n, dim), unit rows.
        n_tokens: int32 array (n,): tokens the encoder read per document.
        truncated: bool array (n,): True where the document was cut at the encoder's ``max_tokens``.
        model_id: Fingerprint of the model that made the vectors.
        dim: Embedding width.
        library_version: Version of reformer-retrieval that wrote the file ("" if unknown).
    """

    ids: list[Id]
    vectors: np.ndarray
    n_tokens: np.ndarray
    truncated: np.ndarray
    model_id: str
    dim: int
    library_version: str = ""

    def __len__(self) -> int:
        return len(self.ids)


def _ids_kind(ids: Sequence[Any], what: str) -> IdKind:
    kinds = set()
    for i, x in enumerate(ids):
        if isinstance(x, (bool, np.bool_)):
            raise CorpusError(f"{what}: id at position {i} is a bool ({x!r}); ids must be str or int")
        if isinstance(x, str):
            kinds.add("str")
        elif isinstance(x, (int, np.integer)):
            kinds.add("int")
        else:
            raise CorpusError(f"{what}: id at position {i} is {type(x).__name__} ({x!r}); ids must be str or int")
        if len(kinds) > 1:
            raise CorpusError(f"{what}: ids mix strings and integers (position {i}: {x!r})")
    return kinds.pop() if kinds else "str"


def _embeddings_schema(dim: int, id_kind: IdKind, model_id: str) -> pa.Schema:
    from reformer_retrieval import __version__

    return pa.schema(
        [
            pa.field("id", _id_type(id_kind), nullable=False),
            pa.field("embedding", pa.list_(pa.float32(), dim), nullable=False),
            pa.field("n_tokens", pa.int32(), nullable=False),
            pa.field("truncated", pa.bool_(), nullable=False),
        ],
        metadata={
            META_MODEL_ID: model_id.encode("utf-8"),
            META_DIM: str(dim).encode("ascii"),
            META_VERSION: __version__.encode("ascii"),
            META_FORMAT: EMBEDDINGS_FORMAT,
            META_CHANNELS: split_model_id(model_id)[1].encode("utf-8"),
        },
    )


def _embeddings_table(
    schema: pa.Schema, ids: Sequence[Id], vectors: np.ndarray, n_tokens: Any, truncated: Any, what: str
) -> pa.Table:
    dim = schema.field("embedding").type.list_size
    vectors = np.asarray(vectors)
    n = len(ids)
    if vectors.ndim != 2 or vectors.shape != (n, dim):
        raise CorpusError(f"{what}: vectors have shape {vectors.shape}, expected ({n}, {dim})")
    if vectors.dtype != np.float32:
        raise CorpusError(f"{what}: vectors must be float32, got {vectors.dtype}")
    if not np.isfinite(vectors).all():
        bad = int(np.flatnonzero(~np.isfinite(vectors).all(axis=1))[0])
        raise CorpusError(f"{what}: the vector of id {ids[bad]!r} holds NaN or infinity")
    n_tokens = np.asarray(n_tokens)
    truncated = np.asarray(truncated)
    if n_tokens.shape != (n,) or truncated.shape != (n,):
        raise CorpusError(
            f"{what}: n_tokens {n_tokens.shape} and truncated {truncated.shape} must both have shape ({n},)"
        )
    if n and (n_tokens.min() < 0 or n_tokens.max() > np.iinfo(np.int32).max):
        raise CorpusError(f"{what}: n_tokens must be in [0, 2**31)")
    try:
        id_array = pa.array(list(ids), type=schema.field("id").type)
    except (pa.ArrowException, OverflowError) as exc:
        raise CorpusError(f"{what}: ids cannot be stored as {schema.field('id').type} ({_first_line(exc)})") from None
    flat = pa.array(np.ascontiguousarray(vectors).reshape(-1), type=pa.float32())
    return pa.Table.from_arrays(
        [
            id_array,
            pa.FixedSizeListArray.from_arrays(flat, dim),
            pa.array(n_tokens.astype(np.int32), type=pa.int32()),
            pa.array(truncated.astype(bool), type=pa.bool_()),
        ],
        schema=schema,
    )


class EmbeddingWriter:
    """Writes an embeddings file in pieces, atomically: nothing appears under ``path`` until `close`.

    Example:
        >>> with EmbeddingWriter("emb.parquet", dim=256, model_id="abc", id_kind="str") as w:  # doctest: +SKIP
        ...     w.write(ids, vectors, n_tokens, truncated)
    """

    def __init__(self, path: str | os.PathLike[str], dim: int, model_id: str, id_kind: IdKind = "str") -> None:
        if not isinstance(dim, (int, np.integer)) or dim <= 0:
            raise ValueError(f"dim={dim!r}: must be a positive integer")
        self.path = Path(path)
        self.dim = int(dim)
        self.model_id = model_id
        self.schema = _embeddings_schema(self.dim, id_kind, model_id)
        self.rows = 0
        self._stack = contextlib.ExitStack()
        self._tmp = self._stack.enter_context(atomic_path(self.path))
        self._writer = pq.ParquetWriter(self._tmp, self.schema, compression="zstd")
        self._closed = False

    def write(self, ids: Sequence[Id], vectors: np.ndarray, n_tokens: Any, truncated: Any) -> None:
        """Append rows (validated: shapes, float32, finite, id type)."""
        if len(ids) == 0:
            return
        self.write_table(_embeddings_table(self.schema, ids, vectors, n_tokens, truncated, str(self.path)))

    def write_table(self, table: pa.Table) -> None:
        """Append an Arrow table that already has this file's schema (e.g. read from a part file)."""
        table = table.replace_schema_metadata(self.schema.metadata)
        if not table.schema.equals(self.schema, check_metadata=False):
            raise CorpusError(f"{self.path}: rows to append have schema {table.schema}, expected {self.schema}")
        self._writer.write_table(table, row_group_size=65536)
        self.rows += table.num_rows

    def close(self) -> Path:
        """Finish the file and move it under its final name; returns the path."""
        if not self._closed:
            self._closed = True
            self._writer.close()
            self._stack.close()
        return self.path

    def abort(self) -> None:
        """Drop everything written so far (the final path is left as it was)."""
        if not self._closed:
            self._closed = True
            with contextlib.suppress(Exception):
                self._writer.close()
            self._stack.__exit__(RuntimeError, RuntimeError("aborted"), None)

    def __enter__(self) -> EmbeddingWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_embeddings(
    path: str | os.PathLike[str],
    ids: Sequence[Id],
    vectors: np.ndarray,
    n_tokens: Any,
    truncated: Any,
    model_id: str,
) -> Path:
    """Write an embeddings Parquet file atomically; returns its path.

    Args:
        path: Output file.
        ids: Document ids, all str or all int.
        vectors: float32 (n, dim).
        n_tokens: Tokens read per document (n,).
        truncated: Whether each document was cut (n,).
        model_id: Fingerprint of the encoder (stored in the file metadata with ``dim`` and the version).
    """
    vectors = np.asarray(vectors)
    if vectors.ndim != 2:
        raise CorpusError(f"{path}: vectors must be a 2-d array (n, dim), got shape {vectors.shape}")
    kind = _ids_kind(ids, what=str(path))
    with EmbeddingWriter(path, dim=vectors.shape[1], model_id=model_id, id_kind=kind) as writer:
        writer.write(ids, vectors, n_tokens, truncated)
    return Path(path)


def _read_table(path: Path, columns: list[str] | None = None) -> pa.Table:
    pf = open_parquet(path)
    try:
        return pf.read(columns=columns, use_threads=True)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise CorpusError(f"{path}: cannot read ({_first_line(exc)})") from None


def read_embeddings_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``model_id``, ``dim``, ``library_version`` and ``count`` of an embeddings file (footer only)."""
    path = Path(path)
    pf = open_parquet(path)
    return {**_check_embeddings_schema(path, pf.schema_arrow), "count": pf.metadata.num_rows}


def _check_embeddings_schema(path: Path, schema: pa.Schema) -> dict[str, Any]:
    missing = [c for c in EMBEDDING_COLUMNS if c not in schema.names]
    if missing:
        raise CorpusError(
            f"{path}: not an embeddings file: missing column(s) {', '.join(missing)} "
            f"(has {', '.join(schema.names)})"
        )
    meta = schema.metadata or {}
    if META_MODEL_ID not in meta or META_DIM not in meta:
        raise CorpusError(f"{path}: embeddings file has no model_id/dim in its metadata")
    dim = int(meta[META_DIM])
    emb_type = schema.field("embedding").type
    if not pa.types.is_fixed_size_list(emb_type) or emb_type.list_size != dim:
        raise CorpusError(f"{path}: column 'embedding' has type {emb_type}, expected fixed_size_list<float>[{dim}]")
    return {
        "model_id": meta[META_MODEL_ID].decode("utf-8"),
        "dim": dim,
        "library_version": meta.get(META_VERSION, b"").decode("utf-8"),
        "channels": meta.get(META_CHANNELS, b"both").decode("utf-8"),
    }


def _table_to_embeddings(table: pa.Table, info: dict[str, Any], path: Path) -> EmbeddingTable:
    dim = info["dim"]
    emb = table.column("embedding")
    if emb.null_count:
        raise CorpusError(f"{path}: column 'embedding' holds nulls")
    emb = emb.combine_chunks() if emb.num_chunks != 1 else emb.chunk(0)
    values = emb.flatten().to_numpy(zero_copy_only=False) if len(emb) else np.zeros(0, np.float32)
    vectors = np.ascontiguousarray(values.astype(np.float32, copy=False).reshape(-1, dim))
    return EmbeddingTable(
        ids=table.column("id").to_pylist(),
        vectors=vectors,
        n_tokens=table.column("n_tokens").to_numpy().astype(np.int32),
        truncated=table.column("truncated").to_numpy(zero_copy_only=False).astype(bool),
        model_id=info["model_id"],
        dim=dim,
        library_version=info["library_version"],
    )


def read_embeddings(path: str | os.PathLike[str]) -> EmbeddingTable:
    """Read a whole embeddings file (see `iter_embeddings` to stream a large one)."""
    path = Path(path)
    pf = open_parquet(path)
    info = _check_embeddings_schema(path, pf.schema_arrow)
    return _table_to_embeddings(_read_table(path, list(EMBEDDING_COLUMNS)), info, path)


def iter_embeddings(path: str | os.PathLike[str], batch_size: int = 65536) -> Iterator[EmbeddingTable]:
    """Stream an embeddings file in pieces of at most ``batch_size`` rows."""
    path = Path(path)
    pf = open_parquet(path)
    info = _check_embeddings_schema(path, pf.schema_arrow)
    try:
        for rb in pf.iter_batches(batch_size=batch_size, columns=list(EMBEDDING_COLUMNS)):
            yield _table_to_embeddings(pa.Table.from_batches([rb]), info, path)
    except (pa.ArrowException, OSError) as exc:
        raise CorpusError(f"{path}: cannot read ({_first_line(exc)})") from None
