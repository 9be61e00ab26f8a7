"""FAISS backends: exact inner product (``flat``), ``hnsw`` and ``ivfpq``.

Pitfalls handled here (see the FAISS issues cited in ``dedup_retrieval_anchors.md``):

* Flat indexes do not take ids and shift ids on removal: ``flat`` wraps ``IndexFlatIP`` in
  ``IndexIDMap2`` with our rows as labels, so removal keeps every other label and `reconstruct` works.
* HNSW cannot remove vectors: removed rows become tombstones excluded by an ``IDSelector`` at search
  time (the graph keeps them; `VectorIndex.count` does not).
* HNSW must be built with ``METRIC_INNER_PRODUCT`` explicitly (the default is L2).
* IVF-PQ needs training: it is trained on a seeded random sample of the first vectors added (or of
  `IVFPQIndex.train`'s); its scores are PQ approximations, and a search visits only ``nprobe`` lists
  (range search too). Training on fewer vectors than FAISS's guideline (39 per k-means centroid:
  ``39 * 2**nbits`` for the PQ codebooks, ``39 * nlist`` for the coarse lists) is refused, not
  worked around by quietly lowering ``nbits`` / ``nlist`` for the life of the index.
* ``range_search`` keeps ``score > radius`` for inner product; we ask for the next float below the
  threshold and `VectorIndex.range_search` filters to ``score >= threshold``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar

import faiss
import numpy as np
from reformer_retrieval.indexes.base import IndexInputError, VectorIndex, float_below

__all__ = ["FlatIndex", "HNSWIndex", "IVFPQIndex", "set_threads"]

INDEX_FILE = "index.faiss"


def set_threads(n: int | None) -> int:
    """Set the number of OpenMP threads FAISS uses (``None`` or 0 leaves it); returns the current count."""
    if n:
        if n < 0:
            raise ValueError(f"thread count must be positive, got {n}")
        faiss.omp_set_num_threads(int(n))
    return int(faiss.omp_get_max_threads())


def _selector(rows: np.ndarray) -> Any:
    return faiss.IDSelectorBatch(np.ascontiguousarray(rows, dtype=np.int64))


class _FaissIndex(VectorIndex):
    """Hooks shared by the FAISS backends: search, range search, reconstruct and write ``self.index``.

    Subclasses create ``self.index`` (a FAISS index whose labels are our rows) and implement `_add`,
    `_remove` and `_read`; they override `_search` / `_range_search` when searching needs parameters.
    """

    index: Any

    def _search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(q, k)

    def _range_search(self, q: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.index.range_search(q, float_below(threshold))

    def _reconstruct(self, rows: np.ndarray) -> np.ndarray:
        return np.stack([self.index.reconstruct(int(r)) for r in rows])

    def _write(self, directory: Path) -> list[str]:
        faiss.write_index(self.index, str(directory / INDEX_FILE))
        return [INDEX_FILE]


class FlatIndex(_FaissIndex):
    """Exact inner-product search over every stored vector (``IndexIDMap2(IndexFlatIP)``)."""

    kind: ClassVar[str] = "flat"
    approximate: ClassVar[bool] = False

    def __init__(self, dim: int, model_id: str | None = None, faiss_index: Any = None) -> None:
        super().__init__(dim, model_id)
        self.index = faiss_index if faiss_index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))

    def _add(self, x: np.ndarray, rows: np.ndarray) -> None:
        self.index.add_with_ids(x, rows)

    def _remove(self, rows: np.ndarray) -> None:
        self.index.remove_ids(_selector(rows))

    @classmethod
    def _read(cls, directory: Path, manifest: dict[str, Any]) -> FlatIndex:
        return cls(manifest["dim"], manifest.get("model_id"), faiss.read_index(str(directory / INDEX_FILE)))


class HNSWIndex(_FaissIndex):
    """Approximate search on an HNSW graph (``IndexHNSWFlat``, inner product); scores are exact.

    Args:
        dim: Vector width.
        model_id: Model that produced the vectors.
        m: Graph degree (FAISS ``M``); more = better recall, more memory, slower build.
        ef_construction: Candidate list size while building.
        ef_search: Candidate list size while searching (settable later; >= k is enforced per query).
    """

    kind: ClassVar[str] = "hnsw"
    approximate: ClassVar[bool] = True

    def __init__(
        self,
        dim: int,
        model_id: str | None = None,
        m: int = 32,
        ef_construction: int = 80,
        ef_search: int = 128,
        faiss_index: Any = None,
    ) -> None:
        super().__init__(dim, model_id)
        if m < 2 or ef_construction < 1 or ef_search < 1:
            raise IndexInputError(f"bad HNSW parameters m={m} ef_construction={ef_construction} ef_search={ef_search}")
        if faiss_index is None:
            faiss_index = faiss.IndexHNSWFlat(self.dim, int(m), faiss.METRIC_INNER_PRODUCT)
            faiss_index.hnsw.efConstruction = int(ef_construction)
        self.index = faiss_index
        self.m = int(m)
        self.ef_construction = int(faiss_index.hnsw.efConstruction)
        self.ef_search = int(ef_search)
        self._removed = np.zeros(0, dtype=np.int64)
        # (IDSelectorBatch, IDSelectorNot) excluding the removed rows; built on first use after a change.
        # Kept here, not only in the search parameters: SWIG holds raw pointers to them.
        self._exclude_removed: tuple[Any, Any] | None = None

    @property
    def parameters(self) -> dict[str, Any]:
        return {"m": self.m, "ef_construction": self.ef_construction, "ef_search": self.ef_search}

    def _set_removed(self, rows: np.ndarray) -> None:
        """Record the tombstoned rows and drop the cached selector built from the previous ones."""
        self._removed = rows
        self._exclude_removed = None

    def _params(self, k: int) -> Any:
        params = faiss.SearchParametersHNSW()
        params.efSearch = max(self.ef_search, k)
        if len(self._removed):
            if self._exclude_removed is None:
                batch = _selector(self._removed)
                self._exclude_removed = (batch, faiss.IDSelectorNot(batch))
            params.sel = self._exclude_removed[1]
        return params

    def _add(self, x: np.ndarray, rows: np.ndarray) -> None:
        if int(rows[0]) != self.index.ntotal:
            raise IndexInputError(f"HNSW rows must be sequential: expected {self.index.ntotal}, got {rows[0]}")
        self.index.add(x)

    def _search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(q, k, params=self._params(k))

    def _range_search(self, q: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.index.range_search(q, float_below(threshold), params=self._params(0))

    def _remove(self, rows: np.ndarray) -> None:
        self._set_removed(np.union1d(self._removed, rows))

    @classmethod
    def _read(cls, directory: Path, manifest: dict[str, Any]) -> HNSWIndex:
        p = manifest.get("parameters", {})
        index = faiss.read_index(str(directory / INDEX_FILE))
        return cls(
            manifest["dim"], manifest.get("model_id"), m=p.get("m", 32),
            ef_search=p.get("ef_search", 128), faiss_index=index,
        )

    def _after_load(self) -> None:
        """Removed rows are the holes of the id map."""
        live = self.idmap.live_mask()
        total = self.index.ntotal
        if len(live) != total:
            raise IndexInputError(f"HNSW graph holds {total} vectors but ids.parquet covers {len(live)} rows")
        self._set_removed(np.nonzero(~live)[0].astype(np.int64))


def default_nlist(n: int) -> int:
    """About ``sqrt(n)`` inverted lists, at least 1."""
    return max(1, round(math.sqrt(max(n, 1))))


def default_pq_m(dim: int) -> int:
    """The largest divisor of ``dim`` not above ``dim / 4`` (four dimensions per sub-quantiser), at least 1."""
    target = max(1, dim // 4)
    return max(d for d in range(1, target + 1) if dim % d == 0)


def min_training_size(nbits: int, nlist: int | None = None) -> int:
    """Fewest training vectors FAISS's guideline (39 per k-means centroid) allows for IVF-PQ:
    ``39 * 2**nbits`` PQ centroids per sub-quantiser, and ``39 * nlist`` when ``nlist`` is fixed."""
    return 39 * max(1 << int(nbits), int(nlist) if nlist is not None else 1)


class IVFPQIndex(_FaissIndex):
    """Inverted lists over product-quantised codes (``IndexIVFPQ``, inner product); compact, approximate.

    Trained on a seeded random sample of the vectors of the first `add` (or `train`). Scores are PQ
    approximations; only ``nprobe`` lists are visited per query (range search included).

    Training needs at least ``39 * 2**nbits`` vectors (9,984 for the default ``nbits=8``) and, for an
    explicit ``nlist``, ``39 * nlist``: FAISS's k-means guideline of 39 points per centroid. Fewer are
    refused (`IndexInputError` naming the nbits that would fit); call `train` on a larger sample
    before adding a small first batch, lower ``nbits``, or use ``flat`` / ``hnsw``.

    Args:
        dim: Vector width.
        model_id: Model that produced the vectors.
        nlist: Number of inverted lists (``None``: about sqrt(n) of the training vectors, capped so
            every list gets 39 training points; recorded in the manifest).
        m: Sub-quantisers (must divide ``dim``; ``None``: ``dim / 4``-ish).
        nbits: Bits per sub-quantiser code (1..8).
        nprobe: Lists visited per query.
        train_size: Training sample size (``None``: ``39 * max(nlist, 2**nbits)``, FAISS's minimum for
            both k-means, capped at n; PQ training dominates the build time; a smaller one is refused).
        seed: Seed of the training sample and of k-means.
    """

    kind: ClassVar[str] = "ivfpq"
    approximate: ClassVar[bool] = True

    def __init__(
        self,
        dim: int,
        model_id: str | None = None,
        nlist: int | None = None,
        m: int | None = None,
        nbits: int = 8,
        nprobe: int = 16,
        train_size: int | None = None,
        seed: int = 0,
        faiss_index: Any = None,
    ) -> None:
        super().__init__(dim, model_id)
        m = default_pq_m(self.dim) if m is None else int(m)
        if m <= 0 or self.dim % m:
            raise IndexInputError(f"IVF-PQ m={m} must divide the dimension {self.dim}")
        if not 1 <= nbits <= 8:
            raise IndexInputError(f"IVF-PQ nbits must be in 1..8, got {nbits}")
        if nprobe < 1:
            raise IndexInputError(f"nprobe must be positive, got {nprobe}")
        self.nlist, self.m, self.nbits = nlist, m, int(nbits)
        self.train_size, self.seed = train_size, int(seed)
        self.index = faiss_index
        self._nprobe = int(nprobe)
        if faiss_index is not None:
            ivf = faiss.extract_index_ivf(faiss_index)
            self.nlist = int(ivf.nlist)
            ivf.nprobe = self._nprobe

    @property
    def nprobe(self) -> int:
        """Inverted lists visited per query."""
        return self._nprobe

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        if value < 1:
            raise IndexInputError(f"nprobe must be positive, got {value}")
        self._nprobe = int(value)
        if self.index is not None:
            self.index.nprobe = self._nprobe

    @property
    def is_trained(self) -> bool:
        """Whether the coarse quantiser and the PQ codebooks exist."""
        return self.index is not None and self.index.is_trained

    @property
    def parameters(self) -> dict[str, Any]:
        return {
            "nlist": self.nlist, "m": self.m, "nbits": self.nbits, "nprobe": self._nprobe,
            "train_size": self.train_size, "seed": self.seed,
        }

    def train(self, x: np.ndarray) -> None:
        """Train the quantisers on a seeded sample of ``x`` (unit vectors ``(n, dim)``)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        n = len(x)
        nbits = self.nbits
        need = min_training_size(self.nbits, self.nlist)
        if n < need:
            fits = max((b for b in range(1, 9) if min_training_size(b, self.nlist) <= n), default=None)
            lower = f"lower nbits (nbits={fits} fits {n:,})" if fits is not None else "lower nbits"
            what = f"nbits={self.nbits}" + (f" and nlist={self.nlist}" if self.nlist is not None else "")
            raise IndexInputError(
                f"IVF-PQ with {what} needs at least {need:,} training vectors (FAISS's 39 per k-means centroid); "
                f"got {n:,}. Train it on more first (IVFPQIndex.train), {lower}, or use a flat / hnsw index"
            )
        nlist = self.nlist if self.nlist is not None else max(1, min(default_nlist(n), n // 39))
        size = self.train_size if self.train_size is not None else max(39 * nlist, (1 << nbits) * 39)
        if size < need:
            raise IndexInputError(f"IVF-PQ train_size={size:,} is below the {need:,} vectors {self.nbits}-bit codes need")
        size = min(size, n)
        rng = np.random.default_rng(self.seed)
        sample = x if size >= n else x[np.sort(rng.choice(n, size=size, replace=False))]
        quantizer = faiss.IndexFlatIP(self.dim)
        index = faiss.IndexIVFPQ(quantizer, self.dim, nlist, self.m, nbits, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = self.seed
        index.pq.cp.seed = self.seed
        index.cp.verbose = False
        index.train(sample)
        index.set_direct_map_type(faiss.DirectMap.Hashtable)
        index.nprobe = self._nprobe
        self.index = index
        self.nlist, self.nbits = nlist, nbits
        self._quantizer = quantizer  # IndexIVF does not own a Python-created quantiser

    def _add(self, x: np.ndarray, rows: np.ndarray) -> None:
        if not self.is_trained:
            self.train(x)
        self.index.add_with_ids(x, rows)

    def _remove(self, rows: np.ndarray) -> None:
        self.index.remove_ids(faiss.IDSelectorArray(np.ascontiguousarray(rows, dtype=np.int64)))

    @classmethod
    def _read(cls, directory: Path, manifest: dict[str, Any]) -> IVFPQIndex:
        p = manifest.get("parameters", {})
        index = faiss.read_index(str(directory / INDEX_FILE))
        return cls(
            manifest["dim"], manifest.get("model_id"), nlist=p.get("nlist"), m=p.get("m"),
            nbits=p.get("nbits", 8), nprobe=p.get("nprobe", 16), train_size=p.get("train_size"),
            seed=p.get("seed", 0), faiss_index=index,
        )
