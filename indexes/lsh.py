"""Binary LSH over embeddings: sign bits of fixed random rotations, Hamming buckets, exact re-scoring.

Each vector is projected on ``n_tables * bits_per_table`` fixed random directions (orthogonalised in
blocks of ``dim``, drawn from ``seed``); the signs give a binary code (SimHash). The code is cut into
``n_tables`` substrings; a stored vector is a *candidate* for a query when, in at least one table, its
substring is within ``nflip`` bit flips of the query's (multi-index hashing, FAISS
``IndexBinaryMultiHash``). Candidates are then scored exactly by inner product on the stored float
vectors, so scores are exact and only recall is approximate.

Recall is sized from a cosine threshold (`reformer_retrieval.indexes.lsh_params`): a bit differs with
probability ``arccos(s) / pi``, a table matches with ``P = sum_{i<=nflip} C(b, i) p^i (1-p)^(b-i)`` and
a pair is found with ``1 - (1 - P)^n_tables``. Given ``threshold`` and no table settings, the index
derives the cheapest tables / bits / flips finding a pair at the threshold with probability ``recall``
(0.99); settings given with a threshold are refused when they fall short, naming the recall they reach.
Without a threshold the legacy defaults (8 tables x 16 bits, 1 flip: recall 0.99 from cosine 0.936 up,
0.055 at 0.41) apply, and `VectorIndex.range_search` refuses a threshold below the lowest cosine the
settings serve with that recall (`min_cosine`), instead of silently missing pairs.

Files: ``lsh_rotation.npy`` (the projection) and the float vectors as shards ``vectors-NNNNNN-XXXXXXXX.npy`` (one
per `add`; `reformer_retrieval.indexes.shards`; indexes written before shards hold one ``index.faiss``,
``IndexFlatIP``). Removed rows stay as tombstones; the buckets are rebuilt from the vectors on first
search after loading.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar

import faiss
import numpy as np
from reformer_retrieval.indexes.base import IndexInputError, VectorIndex, filter_range_hits, sort_range_hits
from reformer_retrieval.indexes.lsh_params import (
    DEFAULT_RECALL,
    lsh_params,
    lsh_recall,
    min_cosine,
    tables_needed,
)
from reformer_retrieval.indexes.shards import ShardedArray

__all__ = ["BinaryLSHIndex", "collision_probability"]

INDEX_FILE = "index.faiss"  # vectors of indexes written before shards
ROTATION_FILE = "lsh_rotation.npy"
VECTOR_PREFIX = "vectors"
LEGACY_DEFAULTS = {"n_tables": 8, "bits_per_table": 16, "nflip": 1}


def collision_probability(cosine: float, n_tables: int = 8, bits_per_table: int = 16, nflip: int = 1) -> float:
    """Probability that a stored vector at ``cosine`` to the query becomes a candidate (`lsh_recall`)."""
    return lsh_recall(cosine, n_tables, bits_per_table, nflip)


def random_rotation(dim: int, n_bits: int, seed: int) -> np.ndarray:
    """``(dim, n_bits)`` projection: Gaussian directions, orthonormal within each block of ``dim``."""
    rng = np.random.default_rng(seed)
    blocks = []
    remaining = n_bits
    while remaining > 0:
        width = min(dim, remaining)
        g = rng.standard_normal((dim, width))
        qmat, r = np.linalg.qr(g)
        qmat = qmat * np.sign(np.diag(r))[None, :]
        blocks.append(qmat)
        remaining -= width
    return np.ascontiguousarray(np.concatenate(blocks, axis=1), dtype=np.float32)


def _read_faiss_vectors(path: Path) -> np.ndarray:
    """The vectors of a pre-shard ``index.faiss`` (``IndexFlatIP``)."""
    flat = faiss.read_index(str(path))
    if not flat.ntotal:
        return np.zeros((0, flat.d), np.float32)
    return np.ascontiguousarray(flat.reconstruct_n(0, flat.ntotal), dtype=np.float32)


def _settings(
    threshold: float | None, recall: float, n_tables: int | None, bits_per_table: int | None, nflip: int | None,
    expected_count: int,
) -> tuple[int, int, int]:
    """(n_tables, bits_per_table, nflip): derived from ``threshold`` where unset, checked against ``recall``."""
    if threshold is None:
        return (
            LEGACY_DEFAULTS["n_tables"] if n_tables is None else int(n_tables),
            LEGACY_DEFAULTS["bits_per_table"] if bits_per_table is None else int(bits_per_table),
            LEGACY_DEFAULTS["nflip"] if nflip is None else int(nflip),
        )
    if not -1.0 <= threshold <= 1.0:
        raise IndexInputError(f"LSH threshold must be a cosine in [-1, 1], got {threshold}")
    if not 0.0 < recall < 1.0:
        raise IndexInputError(f"LSH recall target must be in (0, 1), got {recall}")
    if n_tables is None and bits_per_table is None:
        try:
            best = lsh_params(threshold, recall, n=expected_count,
                              nflips=(0, 1, 2) if nflip is None else (int(nflip),))
        except ValueError as exc:
            raise IndexInputError(str(exc)) from exc
        return best.n_tables, best.bits_per_table, best.nflip
    bits = LEGACY_DEFAULTS["bits_per_table"] if bits_per_table is None else int(bits_per_table)
    flips = LEGACY_DEFAULTS["nflip"] if nflip is None else int(nflip)
    if n_tables is None and 1 <= bits <= 64 and 0 <= flips <= 3:
        tables = tables_needed(threshold, bits, flips, recall)
        if math.isinf(tables):
            raise IndexInputError(f"LSH with {bits} bits per table cannot find pairs at cosine {threshold:g}")
    else:
        tables = int(n_tables) if n_tables is not None else LEGACY_DEFAULTS["n_tables"]
    if tables >= 1 and 1 <= bits <= 64 and 0 <= flips <= 3:
        found = lsh_recall(threshold, tables, bits, flips)
        if found < recall:
            raise IndexInputError(
                f"LSH with {tables} tables x {bits} bits, {flips} flip(s) finds a pair at cosine {threshold:g} with "
                f"probability {found:.3f}, below the recall target {recall:g}; leave the tables and bits unset to "
                f"derive them from the threshold, or use {tables_needed(threshold, bits, flips, recall)} tables of "
                f"{bits} bits"
            )
    return tables, bits, flips


class BinaryLSHIndex(VectorIndex):
    """Sign-bit LSH with Hamming buckets and exact re-scoring of the candidates.

    Args:
        dim: Vector width.
        model_id: Model that produced the vectors.
        n_tables: Number of hash tables (code substrings); ``None``: derived from ``threshold`` (legacy 8
            without one).
        bits_per_table: Bits per table (1..64); the code has ``n_tables * bits_per_table`` bits (a
            multiple of 8). ``None``: derived from ``threshold`` (legacy 16).
        nflip: Bit flips probed around the query's bucket in every table (0..3); ``None``: derived
            (legacy 1).
        seed: Seed of the random rotation.
        query_batch: Queries re-scored at once (bounds memory: candidates x dim floats per batch).
        rotation: A saved projection (loading).
        threshold: Cosine the index must serve with ``recall`` (e.g. the dedup threshold); settings are
            derived from it, or refused if they fall short.
        recall: Probability of finding a pair at ``threshold`` (default 0.99); `range_search` refuses
            thresholds served with less.
        expected_count: Expected number of vectors, for the cost model choosing the settings.
    """

    kind: ClassVar[str] = "lsh"
    approximate: ClassVar[bool] = True

    def __init__(
        self,
        dim: int,
        model_id: str | None = None,
        n_tables: int | None = None,
        bits_per_table: int | None = None,
        nflip: int | None = None,
        seed: int = 0,
        query_batch: int = 256,
        rotation: np.ndarray | None = None,
        threshold: float | None = None,
        recall: float = DEFAULT_RECALL,
        expected_count: int = 100_000,
    ) -> None:
        super().__init__(dim, model_id)
        n_tables, bits_per_table, nflip = _settings(
            threshold, recall, n_tables, bits_per_table, nflip, expected_count
        )
        if n_tables < 1 or not 1 <= bits_per_table <= 64 or (n_tables * bits_per_table) % 8:
            raise IndexInputError(
                f"LSH needs n_tables >= 1, 1 <= bits_per_table <= 64 and n_tables * bits_per_table a "
                f"multiple of 8; got {n_tables} x {bits_per_table}"
            )
        if not 0 <= nflip <= 3:
            raise IndexInputError(f"nflip must be in 0..3, got {nflip}")
        self.n_tables, self.bits_per_table, self._nflip = int(n_tables), int(bits_per_table), int(nflip)
        self.seed, self.query_batch = int(seed), int(query_batch)
        self.threshold = None if threshold is None else float(threshold)
        self.recall = float(recall)
        self.n_bits = self.n_tables * self.bits_per_table
        if rotation is None:
            rotation = random_rotation(self.dim, self.n_bits, self.seed)
        if rotation.shape != (self.dim, self.n_bits):
            raise IndexInputError(f"LSH rotation has shape {rotation.shape}, expected {(self.dim, self.n_bits)}")
        self.rotation = np.ascontiguousarray(rotation, dtype=np.float32)
        self._vectors = ShardedArray(VECTOR_PREFIX, self.dim, np.float32)
        self._removed = np.zeros(0, dtype=np.int64)
        self._live_cache: np.ndarray | None = None
        self._buckets = self._new_buckets()
        self._bucketed = 0  # rows hashed into the buckets so far (the rest are hashed on the next search)

    @property
    def nflip(self) -> int:
        """Bit flips probed around the query's bucket in every table (settable: recall vs speed)."""
        return self._nflip

    @nflip.setter
    def nflip(self, value: int) -> None:
        if not 0 <= value <= 3:
            raise IndexInputError(f"nflip must be in 0..3, got {value}")
        self._nflip = int(value)
        self._buckets.nflip = self._nflip

    @property
    def min_cosine(self) -> float:
        """The lowest cosine at which a pair is found with probability ``recall`` (`lsh_params.min_cosine`)."""
        return min_cosine(self.n_tables, self.bits_per_table, self.nflip, self.recall)

    def recall_at(self, cosine: float) -> float:
        """Probability that a stored vector at ``cosine`` to a query becomes a candidate."""
        return lsh_recall(cosine, self.n_tables, self.bits_per_table, self.nflip)

    @property
    def parameters(self) -> dict[str, Any]:
        return {
            "n_tables": self.n_tables, "bits_per_table": self.bits_per_table, "nflip": self.nflip,
            "seed": self.seed, "threshold": self.threshold, "recall": self.recall,
        }

    @property
    def vectors(self) -> np.ndarray:
        """Every stored vector ``(rows, dim)``, removed rows included (the shards, joined on first use)."""
        return self._vectors.array()

    def _new_buckets(self) -> Any:
        index = faiss.IndexBinaryMultiHash(self.n_bits, self.n_tables, self.bits_per_table)
        index.nflip = self.nflip
        return index

    def codes(self, x: np.ndarray) -> np.ndarray:
        """Packed sign bits ``(n, n_bits / 8)`` uint8 of vectors ``x``."""
        return np.packbits(x @ self.rotation > 0, axis=1)

    def _add(self, x: np.ndarray, rows: np.ndarray) -> None:
        if int(rows[0]) != len(self._vectors):
            raise IndexInputError(f"LSH rows must be sequential: expected {len(self._vectors)}, got {rows[0]}")
        self._vectors.append(x)
        self._live_cache = None

    def _live(self) -> np.ndarray:
        if self._live_cache is None or len(self._live_cache) != len(self._vectors):
            live = np.ones(len(self._vectors), dtype=bool)
            live[self._removed] = False
            self._live_cache = live
        return self._live_cache

    def _hash_pending(self) -> None:
        """Put the rows added (or loaded) since the last search into the buckets."""
        total = len(self._vectors)
        if self._bucketed < total:
            self._buckets.add(self.codes(np.ascontiguousarray(self.vectors[self._bucketed:total])))
            self._bucketed = total

    def candidates(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(lims, rows): every live stored row sharing a probed bucket with each query."""
        self._hash_pending()
        lims, distances, rows = self._buckets.range_search(self.codes(q), self.n_bits + 1)
        lims = lims.astype(np.int64)
        rows = rows.astype(np.int64)
        keep = self._live()[rows]
        if not keep.all():
            lims, _, rows = filter_range_hits(lims, distances, rows, keep)
        return lims, rows

    def _scored(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(lims, exact scores, rows) of all candidates, batch by batch."""
        all_lims, all_scores, all_rows = [np.zeros(1, dtype=np.int64)], [], []
        offset = 0
        vectors = self.vectors
        for start in range(0, len(q), self.query_batch):
            qb = q[start:start + self.query_batch]
            lims, rows = self.candidates(qb)
            qi = np.repeat(np.arange(len(qb)), np.diff(lims))
            scores = np.einsum("ij,ij->i", vectors[rows], qb[qi]) if len(rows) else np.zeros(0, np.float32)
            all_lims.append(lims[1:] + offset)
            offset += len(rows)
            all_scores.append(scores.astype(np.float32))
            all_rows.append(rows)
        return np.concatenate(all_lims), np.concatenate(all_scores), np.concatenate(all_rows)

    def _search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        lims, scores, rows = self._scored(q)
        out_s = np.full((len(q), k), -np.inf, dtype=np.float32)
        out_r = np.full((len(q), k), -1, dtype=np.int64)
        if len(rows):
            scores, rows = sort_range_hits(lims, scores, rows)  # each query's hits stay in its lims span
            qi = np.repeat(np.arange(len(q)), np.diff(lims))
            rank = np.arange(len(rows)) - lims[qi]
            top = rank < k
            out_s[qi[top], rank[top]] = scores[top]
            out_r[qi[top], rank[top]] = rows[top]
        return out_s, out_r

    def _range_search(self, q: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        found = self.recall_at(max(-1.0, min(1.0, threshold)))
        if found < self.recall - 1e-12:
            raise IndexInputError(
                f"this LSH index ({self.n_tables} tables x {self.bits_per_table} bits, {self.nflip} flip(s)) finds "
                f"a pair at cosine {threshold:g} with probability {found:.3f}, below its recall target "
                f"{self.recall:g} (reached from cosine {self.min_cosine:.3f} up); rebuild it with threshold="
                f"{threshold:g} (CLI: --threshold) to derive its tables, or use an exact (flat) index"
            )
        return self._scored(q)  # the caller keeps score >= threshold

    def _remove(self, rows: np.ndarray) -> None:
        self._removed = np.union1d(self._removed, rows)
        self._live_cache = None

    def _reconstruct(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.vectors[rows])

    def _write(self, directory: Path) -> list[str]:
        np.save(directory / ROTATION_FILE, self.rotation, allow_pickle=False)
        return [ROTATION_FILE, *self._vectors.write_all(directory)]

    def _write_append(self, directory: Path) -> tuple[list[str], list[str]]:
        """Write only the shards added since loading (or the last save) into ``directory`` (see `store`)."""
        names, new = self._vectors.write_new(directory)
        return [ROTATION_FILE, *names], new

    def _forget_shard_names(self) -> None:
        self._vectors.forget_names()

    @classmethod
    def _read(cls, directory: Path, manifest: dict[str, Any]) -> BinaryLSHIndex:
        p = manifest.get("parameters", {})
        rotation = np.load(directory / ROTATION_FILE, allow_pickle=False)
        index = cls(
            manifest["dim"], manifest.get("model_id"), n_tables=p.get("n_tables", 8),
            bits_per_table=p.get("bits_per_table", 16), nflip=p.get("nflip", 1), seed=p.get("seed", 0),
            rotation=rotation, recall=p.get("recall", DEFAULT_RECALL),
        )
        index.threshold = p.get("threshold")  # recorded, not re-checked: the settings are the saved ones
        files = list(manifest.get("files", {}))
        names = ([INDEX_FILE] if INDEX_FILE in files else []) + ShardedArray.names_in(files, VECTOR_PREFIX)
        try:
            index._vectors = ShardedArray.load(
                directory, names, VECTOR_PREFIX, index.dim, np.float32, reader=_read_faiss_vectors
            )
        except ValueError as exc:
            raise IndexInputError(str(exc)) from exc
        return index

    def _after_load(self) -> None:
        """Tombstones are the holes of the id map."""
        live = self.idmap.live_mask()
        if len(live) != len(self._vectors):
            raise IndexInputError(
                f"LSH index holds {len(self._vectors)} vectors but ids.parquet covers {len(live)} rows"
            )
        self._removed = np.nonzero(~live)[0].astype(np.int64)
        self._live_cache = None
