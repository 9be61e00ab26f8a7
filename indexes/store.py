"""Index directories: ``manifest.json`` + the backend's files (``index.faiss`` ...) + ``ids.parquet``.

Writes are atomic at the directory level: everything is written into a fresh hidden folder beside
the target (``.NAME.partial-XXXX``), the manifest last, and the folder is then renamed onto the target.
Replacing an existing index (``overwrite=True``, as `index add` does) renames the old folder away
(``.NAME.old-XXXX``), renames the new one in and deletes the old one. A killed writer therefore
leaves either the old index or the new one under the target name, never a mixture; if it dies
between the two renames, `open_index` says where the previous version is.

Appending (`MinHashIndex`, `BinaryLSHIndex`: backends that keep their rows as shards, see
`reformer_retrieval.indexes.shards`): saving an index with ``overwrite=True`` into the directory it
was opened from (or last saved to), whose manifest has not changed since, writes only the new shard
files and a new ids file (``ids-XXXXXXXX.parquet``) beside the existing files, then replaces the
manifest atomically and deletes the previous ids file. Readers only see files the manifest lists, so
a killed writer leaves the previous index intact (plus at most an unlisted orphan file).

The manifest records every file's size and SHA-256. Opening checks that every listed file exists
with its recorded size (a truncated, partial or replaced file is refused) but reads no file to hash
it: a multi-gigabyte index is not re-read per ``search``. ``read_manifest(verify=True)`` (CLI:
``index info --verify``) compares the full SHA-256 of every file, which also catches same-size
corruption. A folder without a manifest is refused as incomplete. Opening an index with
``expect_model_id`` / ``expect_dim`` that differ from the manifest's is refused with both values in the
message.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from reformer_retrieval.indexes.base import METRIC, IdMap, IndexInputError, VectorIndex

from reformer_retrieval.atomic import atomic_path, atomic_write_text

__all__ = [
    "FORMAT_VERSION",
    "IndexDirectoryError",
    "IndexMismatchError",
    "build_index",
    "index_class",
    "open_index",
    "read_manifest",
    "save_index",
]

FORMAT_VERSION = 2  # 2: optional "ids_file" (appended indexes); shard files of lsh / minhash
READABLE_VERSIONS = (1, 2)
MANIFEST_FILE = "manifest.json"
IDS_FILE = "ids.parquet"
VECTOR_KINDS = ("flat", "hnsw", "ivfpq", "lsh")
KINDS = (*VECTOR_KINDS, "minhash")


class IndexDirectoryError(ValueError):
    """An index directory is missing, incomplete, corrupt or of an unknown format."""


class IndexMismatchError(IndexDirectoryError):
    """An index was built from another model or another dimension than the caller's vectors."""


def index_class(kind: str) -> type:
    """The class implementing index ``kind`` (flat, hnsw, ivfpq, lsh, minhash)."""
    from reformer_retrieval.indexes.faiss_index import FlatIndex, HNSWIndex, IVFPQIndex
    from reformer_retrieval.indexes.lsh import BinaryLSHIndex
    from reformer_retrieval.indexes.minhash import MinHashIndex

    classes = {"flat": FlatIndex, "hnsw": HNSWIndex, "ivfpq": IVFPQIndex, "lsh": BinaryLSHIndex,
               "minhash": MinHashIndex}
    if kind not in classes:
        raise IndexInputError(f"unknown index kind {kind!r}; choose one of {', '.join(KINDS)}")
    return classes[kind]


def build_index(
    kind: str, vectors: Any, ids: Sequence[Any], model_id: str | None = None, **params: Any
) -> VectorIndex:
    """A new embedding index of ``kind`` (flat, hnsw, ivfpq, lsh) holding ``vectors`` under ``ids``.

    ``params`` go to the backend's constructor (e.g. ``m=32`` for HNSW, ``nprobe=16`` for IVF-PQ).
    """
    if kind not in VECTOR_KINDS:
        raise IndexInputError(f"unknown embedding index kind {kind!r}; choose one of {', '.join(VECTOR_KINDS)}")
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim != 2:
        raise IndexInputError(f"vectors must be a 2-d array, got shape {x.shape}")
    index = index_class(kind)(x.shape[1], model_id, **params)
    index.add(x, ids)
    return index


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _file_entry(path: Path) -> dict[str, Any]:
    """The manifest entry of a written file: its size and SHA-256."""
    return {"bytes": path.stat().st_size, "sha256": _sha256(path)}


def _write_ids(idmap: IdMap, path: Path) -> None:
    rows, ids = idmap.to_arrays()
    id_type = pa.string() if idmap.id_type == "string" else pa.int64()
    table = pa.table({"row": pa.array(rows, pa.int64()), "id": pa.array(ids, id_type)})
    pq.write_table(table, path)


def _read_ids(path: Path, manifest: dict[str, Any]) -> IdMap:
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise IndexDirectoryError(f"cannot read {path}: {exc}") from exc
    missing = {"row", "id"} - set(table.column_names)
    if missing:
        raise IndexDirectoryError(f"{path} lacks column(s) {sorted(missing)}")
    id_type = manifest.get("id_type")
    ids = table.column("id").to_pylist()
    if len(ids) != manifest.get("count"):
        raise IndexDirectoryError(f"{path} holds {len(ids)} ids but the manifest says {manifest.get('count')}")
    try:
        return IdMap.from_arrays(table.column("row").to_numpy(), ids, int(manifest["next_row"]), id_type)
    except IndexInputError as exc:
        raise IndexDirectoryError(f"{path}: {exc}") from exc


def save_index(index: Any, directory: str | Path, overwrite: bool = False) -> Path:
    """Write ``index`` (any backend) as an index directory, atomically; returns the directory.

    Refuses to replace an existing non-empty directory unless ``overwrite``; never replaces a
    non-empty directory that is not an index directory. With ``overwrite`` into the directory the index
    was opened from (unchanged since), a backend with shards writes only what was added (module doc).
    """
    target = Path(directory)
    if target.exists():
        if not target.is_dir():
            raise IndexDirectoryError(f"{target} exists and is not a directory")
        non_empty = any(target.iterdir())
        if non_empty and not (target / MANIFEST_FILE).is_file():
            raise IndexDirectoryError(f"{target} is a non-empty directory without {MANIFEST_FILE}; refusing to replace it")
        if non_empty and not overwrite:
            raise IndexDirectoryError(f"index directory {target} exists; pass overwrite=True (CLI: --overwrite)")
    if index.idmap.id_type is None and index.count == 0:
        raise IndexInputError("refusing to save an empty index (add vectors first)")
    if overwrite and _appendable(index, target):
        try:
            _append_save(index, target)
        except BaseException:
            _forget_saved(index)
            raise
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.partial-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        names = list(index._write(tmp))
        _write_ids(index.idmap, tmp / IDS_FILE)
        names.append(IDS_FILE)
        files = {}
        for name in names:
            path = tmp / name
            with open(path, "rb+") as fh:
                os.fsync(fh.fileno())
            files[name] = _file_entry(path)
        manifest = _manifest(index, files, IDS_FILE)
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")
        with open(tmp / MANIFEST_FILE, "rb+") as fh:
            os.fsync(fh.fileno())
        _fsync_dir(tmp)
        if target.exists():
            old = target.parent / f".{target.name}.old-{secrets.token_hex(4)}"
            os.rename(target, old)
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _forget_saved(index)
        raise
    _remember_saved(index, target, files)
    return target


def _manifest(index: Any, files: dict[str, Any], ids_file: str) -> dict[str, Any]:
    from reformer_retrieval import __version__

    manifest = {
        "format_version": FORMAT_VERSION,
        "kind": index.kind,
        "metric": getattr(index, "metric", METRIC),
        "dim": int(index.dim),
        "count": int(index.count),
        "next_row": int(index.idmap.next_row),
        "id_type": index.idmap.id_type,
        "model_id": index.model_id,
        "parameters": index.parameters,
        "files": files,
        "library_version": __version__,
        "faiss_version": faiss.__version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if ids_file != IDS_FILE:
        manifest["ids_file"] = ids_file
    return manifest


def _remember_saved(index: Any, directory: Path, files: dict[str, Any]) -> None:
    """Note which directory (and which manifest file list) the index's saved shards belong to."""
    index._saved_state = (str(directory.resolve()), json.dumps(files, sort_keys=True))


def _forget_saved(index: Any) -> None:
    """After a failed save: the next save writes everything."""
    index._saved_state = None
    forget = getattr(index, "_forget_shard_names", None)
    if forget is not None:
        forget()


def _appendable(index: Any, target: Path) -> bool:
    """Whether ``index`` can be saved into ``target`` by writing only its new shards.

    True when the backend keeps shards and ``target``'s manifest lists exactly the files the index was
    opened from or last saved with (nobody replaced the directory since).
    """
    state = getattr(index, "_saved_state", None)
    if state is None or not hasattr(index, "_write_append"):
        return False
    try:
        manifest = json.loads((target / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    if manifest.get("kind") != index.kind or manifest.get("format_version") not in READABLE_VERSIONS:
        return False
    return state == (str(target.resolve()), json.dumps(manifest.get("files"), sort_keys=True))


def _append_save(index: Any, target: Path) -> None:
    """Write the new shards and ids beside the existing files, then swap the manifest (see the module doc)."""
    old = json.loads((target / MANIFEST_FILE).read_text(encoding="utf-8"))
    old_files: dict[str, Any] = old["files"]
    names, new_names = index._write_append(target)
    ids_file = f"ids-{secrets.token_hex(4)}.parquet"
    with atomic_path(target / ids_file, suffix=".parquet") as tmp:
        _write_ids(index.idmap, tmp)
    files: dict[str, Any] = {}
    for name in [*names, ids_file]:
        if name in old_files and name not in new_names:
            files[name] = old_files[name]
        elif name in new_names or name == ids_file:
            files[name] = _file_entry(target / name)
        else:
            raise IndexDirectoryError(f"{target}: {name} is neither an existing nor a new file of the index")
    manifest = _manifest(index, files, ids_file)
    _fsync_dir(target)
    atomic_write_text(target / MANIFEST_FILE, json.dumps(manifest, indent=2, sort_keys=True))
    _fsync_dir(target)
    for name in old_files:
        if name not in files:
            (target / name).unlink(missing_ok=True)
    _remember_saved(index, target, files)


def read_manifest(directory: str | Path, verify: bool = False) -> dict[str, Any]:
    """The validated manifest of an index directory: every listed file present with its recorded size;
    ``verify`` also reads every file and compares its SHA-256 (CLI: ``index info --verify``).

    Raises `IndexDirectoryError` for a missing, incomplete (no manifest: an interrupted writer) or
    inconsistent directory.
    """
    directory = Path(directory)
    if not directory.is_dir():
        parent = directory.parent
        old = sorted(parent.glob(f".{directory.name}.old-*")) if parent.is_dir() else []
        new = [p for p in sorted(parent.glob(f".{directory.name}.partial-*")) if (p / MANIFEST_FILE).is_file()]
        hint = ""
        if old:
            hint = f"; an interrupted write left the previous version at {old[-1]}"
            if new:
                hint += f" and the new, complete one at {new[-1]}"
            hint += f" (rename one of them to {directory.name})"
        raise IndexDirectoryError(f"no index directory at {directory}{hint}")
    path = directory / MANIFEST_FILE
    if not path.is_file():
        raise IndexDirectoryError(
            f"{directory} is not a complete index directory (no {MANIFEST_FILE}; was its writer interrupted?)"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexDirectoryError(f"{path} is not valid JSON: {exc}") from exc
    version = manifest.get("format_version")
    if version not in READABLE_VERSIONS:
        raise IndexDirectoryError(
            f"{path} has format_version {version!r}; this library reads {', '.join(map(str, READABLE_VERSIONS))}"
        )
    for key in ("kind", "dim", "count", "next_row", "files"):
        if key not in manifest:
            raise IndexDirectoryError(f"{path} lacks the key {key!r}")
    if manifest["kind"] not in KINDS:
        raise IndexDirectoryError(f"{path} names an unknown index kind {manifest['kind']!r}")
    for name, info in manifest["files"].items():
        fpath = directory / name
        if not fpath.is_file():
            raise IndexDirectoryError(f"index directory {directory} is incomplete: {name} is missing")
        size = fpath.stat().st_size
        if size != info.get("bytes"):
            raise IndexDirectoryError(
                f"{fpath} has {size} bytes but the manifest says {info.get('bytes')} (partial or replaced file)"
            )
        if verify and _sha256(fpath) != info.get("sha256"):
            raise IndexDirectoryError(f"{fpath} does not match the SHA-256 in {MANIFEST_FILE} (corrupt file)")
    return manifest


def check_compatible(
    manifest: dict[str, Any], directory: str | Path, expect_model_id: str | None, expect_dim: int | None
) -> None:
    """Refuse an index built by another model or for another dimension (both values in the message)."""
    have_model, have_dim = manifest.get("model_id"), manifest.get("dim")
    if expect_model_id is not None and have_model is not None and expect_model_id != have_model:
        raise IndexMismatchError(
            f"index {directory} was built from model {have_model} (dim {have_dim}), but these vectors come "
            f"from model {expect_model_id} (dim {expect_dim if expect_dim is not None else '?'}); rebuild the "
            "index or use the model it was built with"
        )
    if expect_dim is not None and have_dim != expect_dim:
        raise IndexMismatchError(
            f"index {directory} holds {have_dim}-dim vectors of model {have_model}, but these are {expect_dim}-dim "
            f"(model {expect_model_id}); rebuild the index or use the model it was built with"
        )


def open_index(
    directory: str | Path,
    expect_model_id: str | None = None,
    expect_dim: int | None = None,
    verify: bool = False,
) -> Any:
    """Open an index directory of any kind (`VectorIndex` subclass or `MinHashIndex`).

    Args:
        directory: The index directory.
        expect_model_id: Refuse the index unless it was built from this model (when both are known).
        expect_dim: Refuse the index unless it holds vectors of this width.
        verify: Also read every file and check its SHA-256 against the manifest (sizes are always checked;
            off by default so that opening does not re-read the whole index).
    """
    directory = Path(directory)
    manifest = read_manifest(directory, verify=verify)
    check_compatible(manifest, directory, expect_model_id, expect_dim)
    cls = index_class(manifest["kind"])
    try:
        index = cls._read(directory, manifest)
        index.idmap = _read_ids(directory / manifest.get("ids_file", IDS_FILE), manifest)
        index._after_load()
    except IndexInputError as exc:
        raise IndexDirectoryError(f"index directory {directory} is inconsistent: {exc}") from exc
    except RuntimeError as exc:  # FAISS read errors
        raise IndexDirectoryError(f"cannot read the index in {directory}: {exc}") from exc
    _remember_saved(index, directory, manifest["files"])
    return index
