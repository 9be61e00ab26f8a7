"""The `VectorIndex` protocol shared by every embedding index, and the id bookkeeping they all use.

Every index stores unit vectors and scores by inner product (= cosine similarity). Internally each
vector has a *row*: a non-negative integer given in insertion order and never reused (FAISS labels).
``ids.parquet`` maps rows to the corpus ids (strings or integers). Removed rows disappear from that
map; whether the backend frees their storage or keeps a tombstone is its own affair.

Score semantics (the same for every backend):

* `VectorIndex.search` returns the ``k`` highest-scoring rows per query, best first; missing slots
  (fewer than ``k`` live vectors, or an approximate index that found fewer) have row ``-1`` and
  score ``-inf``.
* `VectorIndex.range_search` returns every row found with ``score >= threshold`` (FAISS itself
  keeps ``score > radius`` for inner product; we pass the next float below the threshold and filter
  again), sorted by decreasing score within each query.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

__all__ = [
    "IdMap",
    "IndexInputError",
    "RangeResult",
    "SearchResult",
    "VectorIndex",
    "as_unit_matrix",
    "id_type_of",
]

METRIC = "inner_product"


class IndexInputError(ValueError):
    """Bad input to an index (wrong dimension, duplicate or unknown id, mixed id types)."""


def id_type_of(ids: Sequence[Any]) -> str:
    """``"string"`` if every id is a `str`, ``"int"`` if every id is an integer; raises otherwise."""
    if len(ids) == 0:
        raise IndexInputError("no ids given")
    kinds = set()
    for value in ids:
        if isinstance(value, str):
            kinds.add("string")
        elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            kinds.add("int")
        else:
            raise IndexInputError(f"id {value!r} is neither a string nor an integer")
        if len(kinds) > 1:
            raise IndexInputError(f"ids mix strings and integers (e.g. {value!r}); use one type")
    return kinds.pop()


def as_unit_matrix(vectors: Any, dim: int, what: str = "vectors", check_norm: bool = True) -> np.ndarray:
    """``vectors`` as a C-contiguous float32 ``(n, dim)`` array of unit rows.

    Rows within 2% of unit length (float32 / bfloat16 rounding) are re-normalised; other widths,
    non-finite values and rows further from unit length are refused (naming the first bad row).
    """
    x = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] != dim:
        raise IndexInputError(f"{what} have shape {tuple(x.shape)}; this index needs (n, {dim})")
    if not np.isfinite(x).all():
        bad = int(np.nonzero(~np.isfinite(x).all(axis=1))[0][0])
        raise IndexInputError(f"{what} row {bad} holds NaN or infinity")
    if check_norm and len(x):
        norms = np.linalg.norm(x, axis=1)
        off = np.nonzero(np.abs(norms - 1.0) > 0.02)[0]
        if len(off):
            raise IndexInputError(
                f"{what} row {int(off[0])} has norm {norms[off[0]]:.4f}; indexes take unit vectors "
                "(L2-normalise them first)"
            )
        if np.abs(norms - 1.0).max() > 1e-6:
            x = x / norms[:, None]
    return x


class IdMap:
    """Rows <-> corpus ids for one index; rows are never reused, removed rows become holes."""

    def __init__(self, id_type: str | None = None) -> None:
        self.id_type = id_type
        self._row_to_id: list[Any] = []  # None where removed
        self._id_to_row: dict[Any, int] = {}

    @property
    def next_row(self) -> int:
        """The row the next added vector gets."""
        return len(self._row_to_id)

    def __len__(self) -> int:
        return len(self._id_to_row)

    def __contains__(self, value: Any) -> bool:
        return self._normalise(value) in self._id_to_row

    def _normalise(self, value: Any) -> Any:
        return int(value) if isinstance(value, np.integer) else value

    def check_new(self, ids: Sequence[Any]) -> list[Any]:
        """Validate ``ids`` for adding (type, uniqueness); returns them normalised."""
        kind = id_type_of(ids)
        if self.id_type is not None and kind != self.id_type:
            raise IndexInputError(f"this index holds {self.id_type} ids; got {kind} ids (e.g. {ids[0]!r})")
        out = [self._normalise(v) for v in ids]
        seen: set[Any] = set()
        for value in out:
            if value in seen:
                raise IndexInputError(f"id {value!r} appears twice in the input")
            if value in self._id_to_row:
                raise IndexInputError(f"id {value!r} is already in the index (remove it first to replace it)")
            seen.add(value)
        return out

    def append(self, ids: Sequence[Any], checked: bool = False) -> np.ndarray:
        """Give rows to new ``ids``; returns the rows (int64).

        ``ids`` are validated with `check_new` unless ``checked`` says they are its output already.
        """
        normalised = list(ids) if checked else self.check_new(ids)
        if self.id_type is None and normalised:  # check_new made them all one type
            self.id_type = "string" if isinstance(normalised[0], str) else "int"
        start = self.next_row
        for offset, value in enumerate(normalised):
            self._id_to_row[value] = start + offset
        self._row_to_id.extend(normalised)
        return np.arange(start, start + len(normalised), dtype=np.int64)

    def rows_of(self, ids: Iterable[Any]) -> np.ndarray:
        """Rows of existing ``ids``; raises naming the first unknown one."""
        rows = []
        for value in ids:
            row = self._id_to_row.get(self._normalise(value))
            if row is None:
                raise IndexInputError(f"id {value!r} is not in the index")
            rows.append(row)
        return np.asarray(rows, dtype=np.int64)

    def removable_rows(self, ids: Iterable[Any]) -> np.ndarray:
        """Rows of ``ids`` to remove: every id must exist and appear once (checked before anything changes)."""
        rows = self.rows_of(ids)
        if len(set(rows.tolist())) != len(rows):
            raise IndexInputError("an id is listed twice in the removal")
        return rows

    def remove(self, ids: Iterable[Any]) -> np.ndarray:
        """Forget ``ids`` (all must exist, each once); returns their rows."""
        rows = self.removable_rows(ids)
        for row in rows.tolist():
            value = self._row_to_id[row]
            self._row_to_id[row] = None
            del self._id_to_row[value]
        return rows

    def id_of(self, row: int) -> Any:
        """The id at ``row`` (``None`` for ``-1`` or a removed row)."""
        if row < 0 or row >= len(self._row_to_id):
            return None
        return self._row_to_id[row]

    def live_rows(self) -> np.ndarray:
        """Rows still holding an id, ascending."""
        return np.asarray(sorted(self._id_to_row.values()), dtype=np.int64)

    def live_mask(self) -> np.ndarray:
        """Boolean mask over all rows, False where removed."""
        mask = np.zeros(self.next_row, dtype=bool)
        mask[self.live_rows()] = True
        return mask

    def ids(self) -> list[Any]:
        """Live ids in row order."""
        return [self._row_to_id[r] for r in self.live_rows().tolist()]

    def to_arrays(self) -> tuple[np.ndarray, list[Any]]:
        """(rows, ids) of the live entries, for ``ids.parquet``."""
        rows = self.live_rows()
        return rows, [self._row_to_id[r] for r in rows.tolist()]

    @classmethod
    def from_arrays(cls, rows: Sequence[int], ids: Sequence[Any], next_row: int, id_type: str | None) -> IdMap:
        """Rebuild from ``ids.parquet`` columns and the manifest's ``next_row``."""
        m = cls(id_type)
        m._row_to_id = [None] * next_row
        for row, value in zip(rows, ids):
            row = int(row)
            if row < 0 or row >= next_row:
                raise IndexInputError(f"ids.parquet row {row} is outside 0..{next_row - 1}")
            if value in m._id_to_row:
                raise IndexInputError(f"ids.parquet holds id {value!r} twice")
            m._row_to_id[row] = value
            m._id_to_row[value] = row
        return m


@dataclass
class SearchResult:
    """Top-k hits: ``scores`` and ``rows`` are ``(n_queries, k)``; ``ids[q]`` lists query q's hit ids."""

    scores: np.ndarray
    rows: np.ndarray
    ids: list[list[Any]]

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class RangeResult:
    """Hits above a threshold; query ``q``'s hits are ``rows[lims[q]:lims[q+1]]`` (best first)."""

    lims: np.ndarray
    scores: np.ndarray
    rows: np.ndarray
    ids: list[list[Any]]

    def __len__(self) -> int:
        return len(self.lims) - 1

    def query_index(self) -> np.ndarray:
        """For every hit, the query it belongs to (same length as ``rows``)."""
        return np.repeat(np.arange(len(self), dtype=np.int64), np.diff(self.lims))


def sort_range_hits(lims: np.ndarray, scores: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort each query's hits by decreasing score (ties by row), vectorised over all queries."""
    if len(rows) == 0:
        return scores, rows
    q = np.repeat(np.arange(len(lims) - 1), np.diff(lims))
    order = np.lexsort((rows, -scores.astype(np.float64), q))
    return scores[order], rows[order]


def filter_range_hits(
    lims: np.ndarray, scores: np.ndarray, rows: np.ndarray, keep: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep the hits where ``keep`` is True, recomputing ``lims``."""
    q = np.repeat(np.arange(len(lims) - 1), np.diff(lims))
    counts = np.bincount(q[keep], minlength=len(lims) - 1)
    new_lims = np.zeros(len(lims), dtype=np.int64)
    np.cumsum(counts, out=new_lims[1:])
    return new_lims, scores[keep], rows[keep]


def float_below(threshold: float) -> float:
    """The largest float32 strictly below ``threshold`` (FAISS keeps inner products ``> radius``)."""
    return float(np.nextafter(np.float32(threshold), np.float32(-np.inf)))


class VectorIndex(abc.ABC):
    """An index of unit vectors scored by inner product, keyed by corpus ids.

    Subclasses set `kind` and implement the ``_``-prefixed hooks; the public methods validate input,
    keep the id map and turn rows into ids. Construct through a subclass, `build_index` or
    `open_index`.
    """

    kind: ClassVar[str] = ""
    approximate: ClassVar[bool] = False

    def __init__(self, dim: int, model_id: str | None = None) -> None:
        if dim <= 0:
            raise IndexInputError(f"dim must be positive, got {dim}")
        self.dim = int(dim)
        self.model_id = model_id
        self.idmap = IdMap()

    # ----------------------------------------------------------------- public API
    @property
    def count(self) -> int:
        """Number of live vectors."""
        return len(self.idmap)

    def __len__(self) -> int:
        return self.count

    def __contains__(self, value: Any) -> bool:
        return value in self.idmap

    @property
    def ids(self) -> list[Any]:
        """Live ids in insertion order."""
        return self.idmap.ids()

    @property
    def parameters(self) -> dict[str, Any]:
        """Backend parameters recorded in the manifest (JSON-serialisable)."""
        return {}

    def add(self, vectors: Any, ids: Sequence[Any]) -> None:
        """Add unit ``vectors`` ``(n, dim)`` under ``ids`` (unique, not yet present, one id type)."""
        x = as_unit_matrix(vectors, self.dim)
        ids = list(ids)
        if len(ids) != len(x):
            raise IndexInputError(f"{len(x)} vectors but {len(ids)} ids")
        if len(ids) == 0:
            return
        new_ids = self.idmap.check_new(ids)  # before the backend changes
        rows = np.arange(self.idmap.next_row, self.idmap.next_row + len(ids), dtype=np.int64)
        self._add(x, rows)
        self.idmap.append(new_ids, checked=True)

    def search(self, queries: Any, k: int = 10, exclude: Sequence[Any] | None = None) -> SearchResult:
        """The ``k`` best hits for each query vector; ``exclude[q]`` (an id or None) is dropped from q's list."""
        q = as_unit_matrix(queries, self.dim, "queries", check_norm=False)
        if k <= 0:
            raise IndexInputError(f"k must be positive, got {k}")
        extra = 1 if exclude is not None else 0
        kk = min(k + extra, max(self.count, 1))
        if self.count == 0 or len(q) == 0:
            scores = np.full((len(q), k), -np.inf, dtype=np.float32)
            rows = np.full((len(q), k), -1, dtype=np.int64)
        else:
            scores, rows = self._search(q, kk)
            scores = scores.astype(np.float32, copy=False)
            rows = rows.astype(np.int64, copy=False)
            bad = rows < 0
            scores = np.where(bad, np.float32(-np.inf), scores)
        if exclude is not None:
            if len(exclude) != len(q):
                raise IndexInputError(f"{len(q)} queries but {len(exclude)} entries in exclude")
            ex_rows = np.array(
                [self.idmap._id_to_row.get(self.idmap._normalise(e), -2) if e is not None else -2 for e in exclude],
                dtype=np.int64,
            )
            drop = rows == ex_rows[:, None]
            scores = np.where(drop, np.float32(-np.inf), scores)
            rows = np.where(drop, -1, rows)
            order = np.argsort(-scores.astype(np.float64), axis=1, kind="stable")
            scores = np.take_along_axis(scores, order, axis=1)
            rows = np.take_along_axis(rows, order, axis=1)
        scores, rows = _pad(scores[:, :k], rows[:, :k], k)
        return SearchResult(scores, rows, [[self.idmap.id_of(r) for r in row if r >= 0] for row in rows.tolist()])

    def range_search(self, queries: Any, threshold: float) -> RangeResult:
        """Every hit with ``score >= threshold`` for each query vector, best first."""
        q = as_unit_matrix(queries, self.dim, "queries", check_norm=False)
        if self.count == 0 or len(q) == 0:
            empty = np.zeros(0)
            return RangeResult(np.zeros(len(q) + 1, dtype=np.int64), empty.astype(np.float32),
                               empty.astype(np.int64), [[] for _ in range(len(q))])
        lims, scores, rows = self._range_search(q, float(threshold))
        lims = lims.astype(np.int64, copy=False)
        scores = scores.astype(np.float32, copy=False)
        rows = rows.astype(np.int64, copy=False)
        keep = (scores >= np.float32(threshold)) & (rows >= 0)
        if not keep.all():
            lims, scores, rows = filter_range_hits(lims, scores, rows, keep)
        scores, rows = sort_range_hits(lims, scores, rows)
        row_list = rows.tolist()
        ids = [[self.idmap.id_of(r) for r in row_list[lims[i]:lims[i + 1]]] for i in range(len(q))]
        return RangeResult(lims, scores, rows, ids)

    def remove(self, ids: Sequence[Any]) -> int:
        """Remove ``ids`` (all must be present); returns how many were removed."""
        ids = list(ids)
        if not ids:
            return 0
        rows = self.idmap.removable_rows(ids)  # validated before the backend changes
        self._remove(rows)
        self.idmap.remove(ids)
        return len(rows)

    def reconstruct(self, ids: Sequence[Any]) -> np.ndarray:
        """The stored vectors of ``ids`` ``(n, dim)`` (approximate for compressed backends)."""
        rows = self.idmap.rows_of(ids)
        if len(rows) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self._reconstruct(rows).astype(np.float32, copy=False)

    def save(self, directory: str | Path, overwrite: bool = False) -> Path:
        """Write the index directory atomically (see `reformer_retrieval.indexes.store`)."""
        from reformer_retrieval.indexes.store import save_index

        return save_index(self, directory, overwrite=overwrite)

    @classmethod
    def load(
        cls, directory: str | Path, expect_model_id: str | None = None, expect_dim: int | None = None
    ) -> VectorIndex:
        """Open an index directory (refused if its model id or dimension differ from the expected ones)."""
        from reformer_retrieval.indexes.store import open_index

        index = open_index(directory, expect_model_id=expect_model_id, expect_dim=expect_dim)
        if not isinstance(index, cls):
            raise IndexInputError(f"{directory} holds a {index.kind!r} index, not {cls.kind!r}")
        return index

    # ----------------------------------------------------------------- backend hooks
    @abc.abstractmethod
    def _add(self, x: np.ndarray, rows: np.ndarray) -> None:
        """Store vectors ``x`` under ``rows``."""

    @abc.abstractmethod
    def _search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows), each ``(nq, k)``, best first, ``-1`` rows where nothing was found."""

    @abc.abstractmethod
    def _range_search(self, q: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(lims, scores, rows) of hits with ``score >= threshold`` (extra hits are filtered by the caller)."""

    @abc.abstractmethod
    def _remove(self, rows: np.ndarray) -> None:
        """Drop ``rows`` from search results."""

    @abc.abstractmethod
    def _reconstruct(self, rows: np.ndarray) -> np.ndarray:
        """The stored vectors at ``rows``."""

    @abc.abstractmethod
    def _write(self, directory: Path) -> list[str]:
        """Write the backend's files into ``directory`` (a fresh temporary folder); returns their names."""

    def _after_load(self) -> None:
        """Called once the id map is attached after loading (backends with tombstones rebuild them)."""
        return None

    @classmethod
    @abc.abstractmethod
    def _read(cls, directory: Path, manifest: dict[str, Any]) -> VectorIndex:
        """Rebuild the backend from its files (the id map is attached by the caller)."""


def _pad(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad ``(nq, k')`` results with ``-inf`` / ``-1`` up to ``k`` columns."""
    if scores.shape[1] >= k:
        return scores, rows
    pad = k - scores.shape[1]
    scores = np.concatenate([scores, np.full((len(scores), pad), -np.inf, dtype=np.float32)], axis=1)
    rows = np.concatenate([rows, np.full((len(rows), pad), -1, dtype=np.int64)], axis=1)
    return scores, rows
