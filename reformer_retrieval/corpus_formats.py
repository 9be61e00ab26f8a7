"""Corpus files of every supported format, opened the same way: Parquet, JSON Lines and CSV.

A corpus argument (`resolve_sources`) is a file, a directory (every corpus file below it), a glob, a
``file://`` URI of any of these, or a list. Each file's format comes from its first bytes and its name
(`detect_format`): Parquet (``PAR1``), JSON Lines (``.jsonl``, ``.ndjson``, ``.json``) and CSV (``.csv``,
``.tsv``), plain or compressed with gzip, zstd, bz2 or lz4 (``.jsonl.gz``, ``.jsonl.zst``, ``.csv.gz`` ...).
Anything else is refused with ``only Parquet, JSON Lines and CSV are read: FILE looks like X``.

`scan_file` streams one file as Arrow record batches of chosen columns, in bounded memory: Parquet through
`pyarrow.dataset` (only the asked columns are read), JSON Lines through `pyarrow.json.open_json` and CSV
through `pyarrow.csv.open_csv` (a block at a time; compressed input is decompressed as it streams).
Columns are named by dotted paths into nested records (``metadata.body``): an exact top-level name wins,
else the name is split at the dots. CSV values are read as written (strings: an id ``007`` keeps its
zeros); Parquet and JSON keep their types. `iter_record_batches` chains `scan_file` over a whole corpus and
is the reader to build other pipelines on (e.g. a distributed ``read`` stage).
"""

from __future__ import annotations

import glob as _glob
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.dataset as ds
import pyarrow.json as pa_json
import pyarrow.parquet as pq

__all__ = [
    "CORPUS_SUFFIXES",
    "CorpusError",
    "FileFormat",
    "count_file_rows",
    "describe_columns",
    "detect_format",
    "first_line",
    "iter_record_batches",
    "read_file_schema",
    "resolve_field",
    "resolve_sources",
    "scan_file",
]

Source = str | os.PathLike[str]
FormatKind = Literal["parquet", "json", "csv"]

BLOCK_BYTES = 16 << 20
"""Bytes parsed at a time from a JSON Lines or CSV file (a line longer than this cannot be read)."""

_COMPRESSION_SUFFIXES = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd", ".bz2": "bz2", ".lz4": "lz4"}
_FORMAT_SUFFIXES: dict[str, FormatKind] = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "json",
    ".ndjson": "json",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "csv",
}
CORPUS_SUFFIXES = (
    ".parquet",
    ".pq",
    *(f"{s}{c}" for s in (".jsonl", ".ndjson", ".csv", ".tsv") for c in ("", *_COMPRESSION_SUFFIXES)),
    *(f".json{c}" for c in _COMPRESSION_SUFFIXES),
)
"""File names a directory is searched for (a bare ``.json`` is read only when named, as it is often not
JSON Lines)."""

# Magic bytes of compressions pyarrow decompresses, and of formats it is asked to recognise (for the error).
_COMPRESSION_MAGIC = ((b"\x1f\x8b", "gzip"), (b"\x28\xb5\x2f\xfd", "zstd"), (b"BZh", "bz2"), (b"\x04\x22\x4d\x18", "lz4"))
_OTHER_MAGIC = (
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive (.zip, .xlsx, .docx ...)"),
    (b"\xfd7zXZ\x00", "xz-compressed data (gzip, zstd, bz2 and lz4 are read)"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"ORC", "an ORC file"),
    (b"ARROW1", "an Arrow IPC (Feather) file"),
    (b"\xff\xff\xff\xff", "an Arrow IPC stream"),
    (b"Obj\x01", "an Avro file"),
    (b"SQLite format 3\x00", "an SQLite database"),
    (b"\x89HDF", "an HDF5 file"),
    (b"\x93NUMPY", "a NumPy .npy array"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"\x80\x02", "a Python pickle"),
    (b"\x80\x03", "a Python pickle"),
    (b"\x80\x04", "a Python pickle"),
    (b"\x80\x05", "a Python pickle"),
)


class CorpusError(ValueError):
    """A corpus or embeddings file that cannot be used; the message is one line naming file, column or id."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when empty)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# --------------------------------------------------------------------------------------------- sources
def _local_path(src: Source) -> Path:
    """A local path from a path or a ``file://`` URI (other URI schemes are refused)."""
    text = os.fspath(src)
    if "://" in text:
        scheme = text.split("://", 1)[0].lower()
        if scheme != "file":
            raise CorpusError(f"{text}: only local paths and file:// URIs are read, not {scheme}://")
        if _glob.has_magic(text):  # pyarrow's URI parser does not take glob characters
            return Path(text[len("file://"):])
        from pyarrow import fs

        try:
            _, path = fs.FileSystem.from_uri(text)
        except (pa.ArrowException, ValueError) as exc:
            raise CorpusError(f"{text}: not a usable file:// URI ({first_line(exc)})") from None
        return Path(path)
    return Path(text)


def _is_corpus_name(name: str) -> bool:
    return name.lower().endswith(CORPUS_SUFFIXES)


def resolve_sources(src: Source | Sequence[Source]) -> list[Path]:
    """The corpus files a corpus argument names, in a fixed (sorted) order.

    ``src`` is a file (any name: its format is checked when it is read), a directory (every Parquet, JSON
    Lines and CSV file below it, see `CORPUS_SUFFIXES`; hidden and ``_``-prefixed entries excluded, e.g.
    ``.parts`` folders or ``_SUCCESS``), a glob (``shards/*.jsonl.gz``, ``**`` allowed), a ``file://`` URI
    of any of these, or a list of any of these.

    Raises:
        CorpusError: if a path does not exist, nothing matches, or a URI is not a local one.
    """
    if isinstance(src, (list, tuple)):
        files: list[Path] = []
        for item in src:
            files.extend(resolve_sources(item))
        if not files:
            raise CorpusError("corpus: an empty list of sources was given")
        return files
    path = _local_path(src)  # type: ignore[arg-type]
    if path.is_file():
        return [path]
    if path.is_dir():
        found = sorted(
            p
            for p in path.rglob("*")
            if _is_corpus_name(p.name)
            and p.is_file()
            and not any(part.startswith((".", "_")) for part in p.relative_to(path).parts)
        )
        if not found:
            raise CorpusError(f"corpus directory {path} holds no Parquet, JSON Lines or CSV file")
        return found
    text = str(path)
    if _glob.has_magic(text):
        found = sorted(Path(p) for p in _glob.glob(text, recursive=True) if Path(p).is_file())
        if not found:
            raise CorpusError(f"corpus pattern {text!r} matches no file")
        return found
    raise CorpusError(f"corpus {path}: no such file or directory")


# --------------------------------------------------------------------------------------------- formats
@dataclass(frozen=True)
class FileFormat:
    """How one corpus file is read.

    Attributes:
        kind: ``"parquet"``, ``"json"`` (JSON Lines) or ``"csv"``.
        compression: Codec of a compressed JSON Lines / CSV file (``"gzip"``, ``"zstd"``, ``"bz2"``,
            ``"lz4"``), else None.
        delimiter: Field separator of a CSV file (``","``, or a tab for ``.tsv``).
    """

    kind: FormatKind
    compression: str | None = None
    delimiter: str = ","


def _suffixes(path: Path) -> tuple[str | None, str | None]:
    """(format suffix, compression suffix) of a file name, lower case."""
    suffixes = [s.lower() for s in path.suffixes]
    compression = suffixes[-1] if suffixes and suffixes[-1] in _COMPRESSION_SUFFIXES else None
    rest = suffixes[:-1] if compression else suffixes
    return (rest[-1] if rest else None), compression


def _describe(head: bytes, path: Path) -> str:
    """What a file that is not Parquet / JSON Lines / CSV looks like, for the error message."""
    for magic, what in _OTHER_MAGIC:
        if head.startswith(magic):
            return what
    if len(head) > 262 and head[257:262] == b"ustar":
        return "a tar archive"
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if stripped.startswith(b"["):
        return "a JSON array (one JSON document, not JSON Lines)"
    if stripped.startswith(b"<"):
        return "XML or HTML"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not just a multi-byte character cut at the end of the sample
            suffix = "".join(path.suffixes) or "no extension"
            return f"binary data ({suffix})"
    suffix = "".join(path.suffixes)
    return f"plain text ({suffix})" if suffix else "plain text with no extension"


def _refuse(path: Path, what: str) -> CorpusError:
    return CorpusError(f"only Parquet, JSON Lines and CSV are read: {path} looks like {what}")


def detect_format(path: Source) -> FileFormat:
    """The format of one corpus file, from its first bytes and its name.

    Parquet is known by its magic bytes (or a ``.parquet`` name); a compressed file by its codec's magic
    bytes, its content by the name under the compression suffix (or, with no such name, by a first
    ``{`` after decompression: JSON Lines). JSON Lines and CSV otherwise go by extension; a file with no
    known extension is JSON Lines when it starts with ``{``.

    Raises:
        CorpusError: ``only Parquet, JSON Lines and CSV are read: FILE looks like X`` for anything else, or
            when the file cannot be opened.
    """
    path = _local_path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except FileNotFoundError:
        raise CorpusError(f"{path}: no such file") from None
    except OSError as exc:
        raise CorpusError(f"{path}: cannot open ({first_line(exc)})") from None
    fmt_suffix, comp_suffix = _suffixes(path)
    if head.startswith(b"PAR1") or (fmt_suffix in (".parquet", ".pq") and comp_suffix is None):
        return FileFormat("parquet")
    compression = next((codec for magic, codec in _COMPRESSION_MAGIC if head.startswith(magic)), None)
    if compression is None and comp_suffix is not None and head:
        raise _refuse(path, f"a file named {comp_suffix} that is not {_COMPRESSION_SUFFIXES[comp_suffix]}-compressed")
    delimiter = "\t" if fmt_suffix == ".tsv" else ","
    kind = _FORMAT_SUFFIXES.get(fmt_suffix or "")
    if kind == "parquet":
        raise _refuse(path, f"{compression}-compressed Parquet (Parquet compresses inside the file; decompress it)")
    if compression is not None:
        if kind is None:
            inner = _peek_decompressed(path, compression)
            if not inner.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{"):
                raise _refuse(path, f"{compression}-compressed {_describe(inner, path.with_suffix(''))}")
            kind = "json"
        return FileFormat(kind, compression, delimiter)
    if kind == "json":
        if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"["):
            raise _refuse(path, "a JSON array (one JSON document, not JSON Lines)")
        return FileFormat("json")
    if kind == "csv":
        return FileFormat("csv", None, delimiter)
    if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{"):
        return FileFormat("json")
    raise _refuse(path, "an empty file" if not head else _describe(head, path))


def _peek_decompressed(path: Path, compression: str) -> bytes:
    try:
        with pa.input_stream(str(path), compression=compression) as stream:
            return stream.read(4096)
    except (pa.ArrowException, OSError) as exc:
        raise CorpusError(f"{path}: cannot decompress as {compression} ({first_line(exc)})") from None


# --------------------------------------------------------------------------------------------- fields
def resolve_field(schema: pa.Schema, name: str) -> tuple[pc.Expression, pa.DataType] | None:
    """The expression and type of column ``name`` in ``schema``, following dots into nested records.

    An exact top-level name wins (a column may itself be called ``a.b``); otherwise ``a.b.c`` is field
    ``c`` of struct ``b`` of struct ``a``. None when there is no such field.
    """
    if name in schema.names:
        return pc.field(name), schema.field(name).type
    parts = name.split(".")
    if len(parts) < 2 or parts[0] not in schema.names:
        return None
    t: pa.DataType = schema.field(parts[0]).type
    for part in parts[1:]:
        if not pa.types.is_struct(t) or t.get_field_index(part) < 0:
            return None
        t = t.field(part).type
    return pc.field(*parts), t


def describe_columns(schema: pa.Schema) -> str:
    """The columns of a schema for an error message, nested fields as dotted names (at most 40)."""
    names: list[str] = []

    def walk(prefix: str, t: pa.DataType) -> None:
        for i in range(t.num_fields):
            f = t.field(i)
            names.append(f"{prefix}{f.name}")
            if pa.types.is_struct(f.type) and len(names) < 40:
                walk(f"{prefix}{f.name}.", f.type)

    for f in schema:
        names.append(f.name)
        if pa.types.is_struct(f.type):
            walk(f"{f.name}.", f.type)
    shown = ", ".join(repr(n) for n in names[:40]) + (", ..." if len(names) > 40 else "")
    return shown or "none"


# --------------------------------------------------------------------------------------------- reading
def _json_reader(path: Path, fmt: FileFormat, schema: pa.Schema | None = None) -> pa.RecordBatchReader:
    parse = (
        pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
        if schema is not None
        else pa_json.ParseOptions()
    )
    stream = pa.input_stream(str(path), compression=fmt.compression)
    return pa_json.open_json(stream, read_options=pa_json.ReadOptions(block_size=BLOCK_BYTES), parse_options=parse)


def _csv_reader(path: Path, fmt: FileFormat, string_columns: Sequence[str] = ()) -> pa.RecordBatchReader:
    stream = pa.input_stream(str(path), compression=fmt.compression)
    return pa_csv.open_csv(
        stream,
        read_options=pa_csv.ReadOptions(block_size=BLOCK_BYTES),
        parse_options=pa_csv.ParseOptions(delimiter=fmt.delimiter, newlines_in_values=True),
        convert_options=pa_csv.ConvertOptions(
            column_types={c: pa.string() for c in string_columns},
            include_columns=list(string_columns) or None,
            strings_can_be_null=False,
        ),
    )


def read_file_schema(path: Source, fmt: FileFormat | None = None) -> pa.Schema | None:
    """The schema of one corpus file (a JSON Lines / CSV file's is inferred from its first block).

    Returns None for an empty JSON Lines or CSV file (no rows, no columns).

    Raises:
        CorpusError: unreadable file or unsupported format (one line naming the file).
    """
    path = _local_path(path)
    fmt = fmt or detect_format(path)
    try:
        if fmt.kind == "parquet":
            return pq.read_schema(path)
        if fmt.kind == "json":
            return _json_reader(path, fmt).schema
        schema = _csv_reader(path, fmt).schema
        return pa.schema([pa.field(name, pa.string()) for name in schema.names])  # CSV values are read as text
    except (pa.ArrowException, OSError, ValueError) as exc:
        message = first_line(exc)
        if fmt.kind != "parquet" and message.startswith("Empty"):
            return None
        what = {"parquet": "Parquet", "json": "JSON Lines", "csv": "CSV"}[fmt.kind]
        raise CorpusError(f"{path}: not a readable {what} file ({message})") from None


def count_file_rows(path: Source, fmt: FileFormat | None = None) -> int:
    """Rows of one corpus file: Parquet from its footer; JSON Lines / CSV by reading it through."""
    path = _local_path(path)
    fmt = fmt or detect_format(path)
    if fmt.kind == "parquet":
        try:
            return pq.ParquetFile(path).metadata.num_rows
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise CorpusError(f"{path}: not a readable Parquet file ({first_line(exc)})") from None
    schema = read_file_schema(path, fmt)
    if schema is None:
        return 0
    first = schema.names[0]
    return sum(b.num_rows for b in scan_file(path, {first: first}, fmt=fmt))


def scan_file(
    path: Source,
    columns: Mapping[str, str],
    batch_size: int = 1024,
    fmt: FileFormat | None = None,
    schema: pa.Schema | None = None,
) -> Iterator[pa.RecordBatch]:
    """Stream one corpus file as record batches of the asked columns, in bounded memory.

    Args:
        path: A Parquet, JSON Lines or CSV file (plain or compressed), or its ``file://`` URI.
        columns: Output column name -> field in the file (dotted names reach into nested records).
        batch_size: Rows per batch at most.
        fmt: The file's format if already known (else `detect_format`).
        schema: The file's schema if already known (else `read_file_schema`).

    Yields:
        Record batches whose columns are the keys of ``columns``, in file order (an empty JSON Lines or
        CSV file yields nothing).

    Raises:
        CorpusError: unsupported format, a missing column (naming the file and listing its columns), or
            a read error (naming the file and the first row not read).
    """
    path = _local_path(path)
    fmt = fmt or detect_format(path)
    schema = schema if schema is not None else read_file_schema(path, fmt)
    if schema is None:
        return
    projection: dict[str, pc.Expression] = {}
    for out_name, name in columns.items():
        found = resolve_field(schema, name)
        if found is None:
            raise CorpusError(f"{path}: no column {name!r}; the file has columns: {describe_columns(schema)}")
        projection[out_name] = found[0]
    row = 0
    try:
        if fmt.kind == "parquet":
            dataset = ds.dataset(path, format="parquet")
            batches: Iterator[pa.RecordBatch] = dataset.scanner(
                columns=projection, batch_size=batch_size, use_threads=False
            ).to_batches()
        else:
            tops = sorted({columns[c] if columns[c] in schema.names else columns[c].split(".")[0] for c in columns})
            if fmt.kind == "json":
                # Only the needed top-level fields are parsed, with the types of the first block (a text
                # column null there is read as text).
                explicit = pa.schema(
                    [
                        pa.field(t, pa.string()) if pa.types.is_null(schema.field(t).type) else schema.field(t)
                        for t in tops
                    ]
                )
                reader = _json_reader(path, fmt, explicit)
            else:
                reader = _csv_reader(path, fmt, tops)
            batches = _project_blocks(reader, projection)
        for batch in batches:
            for start in range(0, batch.num_rows, batch_size):
                piece = batch.slice(start, batch_size)
                row += piece.num_rows
                yield piece
    except (pa.ArrowException, OSError) as exc:
        raise CorpusError(f"{path}: cannot read rows from {row} on ({first_line(exc)})") from None


def _project_blocks(reader: pa.RecordBatchReader, projection: dict[str, pc.Expression]) -> Iterator[pa.RecordBatch]:
    """The projected columns of each block a streaming reader parses (one block read at a time, so a read
    error is raised after the rows before it were yielded)."""
    for block in reader:
        scanner = ds.Scanner.from_batches([block], schema=reader.schema, columns=projection, use_threads=False)
        yield from scanner.to_batches()


def iter_record_batches(
    src: Source | Sequence[Source], columns: Mapping[str, str], batch_size: int = 1024
) -> Iterator[tuple[Path, int, pa.RecordBatch]]:
    """Stream a whole corpus (see `resolve_sources`) as ``(file, first row, batch)``, file by file.

    Columns are as in `scan_file`; every file is checked before its rows are read.
    """
    for path in resolve_sources(src):
        row = 0
        for batch in scan_file(path, columns, batch_size):
            yield path, row, batch
            row += batch.num_rows
