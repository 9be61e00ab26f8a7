"""Append-only row arrays kept as shards: one ``.npy`` file per `add`, memory-mapped on load.

An index that only ever appends rows (`BinaryLSHIndex` vectors, `MinHashIndex` signatures) keeps them
as a `ShardedArray`. Saving into the directory the index was opened from writes only the shards added
since (``PREFIX-NNNNNN-XXXXXXXX.npy``, numbered in row order) and leaves every existing shard file
untouched, so ``k`` successive ``index add`` runs cost the size of what they add, not ``k`` times the whole index
(see `reformer_retrieval.indexes.store.save_index`). Loading maps each shard read-only (``mmap_mode``):
opening an index to add to it does not read the stored rows; the shards are concatenated once, on first
use (`ShardedArray.array`). Files are plain ``.npy`` (no pickle).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reformer_retrieval.atomic import atomic_path

__all__ = ["ShardedArray"]


@dataclass
class _Shard:
    """One shard: its rows, and the file that holds them in the directory last saved to (None: unsaved)."""

    data: np.ndarray
    name: str | None = None


class ShardedArray:
    """A ``(n, width)`` array of ``dtype`` built by appending shards.

    Args:
        prefix: File-name prefix of the shards (``PREFIX-000000.npy``, ...).
        width: Columns of every row.
        dtype: Element type.
    """

    def __init__(self, prefix: str, width: int, dtype: np.dtype | type) -> None:
        self.prefix, self.width, self.dtype = prefix, int(width), np.dtype(dtype)
        self._shards: list[_Shard] = []
        self._joined: np.ndarray | None = None

    def __len__(self) -> int:
        return sum(len(s.data) for s in self._shards)

    @property
    def n_shards(self) -> int:
        """Number of shards (one per non-empty append, plus the ones loaded)."""
        return len(self._shards)

    def append(self, rows: np.ndarray) -> None:
        """Add ``rows`` ``(m, width)`` as a new shard (copied; nothing stored is touched)."""
        rows = np.asarray(rows, dtype=self.dtype)
        if rows.ndim != 2 or rows.shape[1] != self.width:
            raise ValueError(f"{self.prefix} rows have shape {rows.shape}; need (m, {self.width})")
        if len(rows):
            self._shards.append(_Shard(np.array(rows, copy=True, order="C")))
            self._joined = None

    def array(self) -> np.ndarray:
        """All rows, in order (shards concatenated on first use after a change, then cached)."""
        if self._joined is None:
            if not self._shards:
                self._joined = np.zeros((0, self.width), dtype=self.dtype)
            elif len(self._shards) == 1:
                self._joined = np.asarray(self._shards[0].data)
            else:
                self._joined = np.concatenate([s.data for s in self._shards])
        return self._joined

    def shard_arrays(self) -> list[np.ndarray]:
        """The shards' rows, in order (memory-mapped for loaded shards)."""
        return [s.data for s in self._shards]

    # ------------------------------------------------------------------ files
    def _name(self, position: int) -> str:
        """``PREFIX-NNNNNN-XXXXXXXX.npy``: the row order, and a random tag so that two writers appending to
        the same directory at once never replace each other's shard (the last manifest wins, consistently)."""
        return f"{self.prefix}-{position:06d}-{secrets.token_hex(4)}.npy"

    def write_all(self, directory: Path) -> list[str]:
        """Write every shard into ``directory`` (a fresh folder); returns the file names, in order."""
        names = []
        for position, shard in enumerate(self._shards):
            name = self._name(position)
            np.save(directory / name, np.asarray(shard.data), allow_pickle=False)
            names.append(name)
        for shard, name in zip(self._shards, names):  # valid once the folder becomes the index directory
            shard.name = name
        return names

    def write_new(self, directory: Path) -> tuple[list[str], list[str]]:
        """Write the unsaved shards into ``directory`` (each atomically); returns (all names, new names).

        The saved shards must be the files of ``directory`` (the caller checks that it was loaded from
        or last saved to it); they are not touched.
        """
        names, new = [], []
        for position, shard in enumerate(self._shards):
            if shard.name is None:
                name = self._name(position)
                with atomic_path(directory / name) as tmp, open(tmp, "wb") as fh:  # a handle: np.save adds no suffix
                    np.save(fh, np.asarray(shard.data), allow_pickle=False)
                shard.name = name
                new.append(name)
            names.append(shard.name)
        return names, new

    def forget_names(self) -> None:
        """Mark every shard unsaved (after a failed save: the names may not exist anywhere)."""
        for shard in self._shards:
            shard.name = None

    @classmethod
    def load(
        cls,
        directory: Path,
        names: Sequence[str],
        prefix: str,
        width: int,
        dtype: np.dtype | type,
        reader: Callable[[Path], np.ndarray] | None = None,
    ) -> ShardedArray:
        """The shards ``names`` (in order) of ``directory``, memory-mapped; ``reader`` reads other formats."""
        out = cls(prefix, width, dtype)
        for name in names:
            path = directory / name
            if name.endswith(".npy"):
                data = np.load(path, mmap_mode="r", allow_pickle=False)
            elif reader is not None:
                data = reader(path)
            else:
                raise ValueError(f"{path}: not a .npy shard")
            if data.ndim != 2 or data.shape[1] != out.width:
                raise ValueError(f"{path} has shape {data.shape}, expected (n, {out.width})")
            if data.dtype != out.dtype:
                data = data.astype(out.dtype)
            out._shards.append(_Shard(data, name))
        return out

    @staticmethod
    def names_in(files: Sequence[str], prefix: str) -> list[str]:
        """The shard files of ``prefix`` among ``files`` (a manifest's), in row order."""
        pattern = re.compile(rf"{re.escape(prefix)}-(\d+)(?:-[0-9a-f]+)?\.npy")
        found = [(int(m.group(1)), f) for f in files if (m := pattern.fullmatch(f))]
        return [f for _, f in sorted(found)]
