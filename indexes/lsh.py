"""Binary LSH over embeddings: sign bits of fixed random rotations, Hamming buckets, exact re-scoring.

Each vector is projected on ``n_tables * bits_per_table`` fixed random directions (orthogonalised in
blocks of ``dim``, drawn from ``seed``); the signs give a binary code (SimHash). The code is cut into
``n_tables`` substrings; a stored vector is a *candidate* for a query when, in at least one table, its
substring is within ``nflip`` bit flips of the query's (multi-index hashing, FAISS
``IndexBinaryMultiHash``). Candidates are then scored exactly by inner product on the stored float
vectors, so scores are exact and only recall is approximate.

For two unit vectors at cosine ``s`` a bit differs with probability ``p = arccos(s) / pi``; a table
matches with probability ``P = sum_{i<=nflip} C(b, i) p^i (1-p)^(b-i)`` and a pair is found with
probability ``1 - (1 - P)^n_tables`` (`collision_probability`). With the defaults (8 tables x 16 bits,
1 flip) that is 0.95 at cosine 0.9 and 0.997 at 0.95, while an unrelated pair (cosine 0) becomes a
candidate with probability 0.2%: good for near-duplicates, not for finding loosely related neighbours.

Files: ``index.faiss`` holds the float vectors (``IndexFlatIP``, one row per index row, removed rows
included as tombstones) and ``lsh_rotation.npy`` the projection matrix; the buckets are rebuilt from
them on load.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar

import faiss
import numpy as np
from reformer_retrieval.indexes.base import IndexInputError, VectorIndex, filter_range_hits, sort_range_hits

__all__ = ["BinaryLSHIndex", "collision_probability"]

INDEX_FILE = "index.faiss"
ROTATION_FILE = "lsh_rotation.npy"


def collision_probability(cosine: float, n_tables: int = 8, bits_per_table: int = 16, nflip: int = 1) -> float:
    """Probability that a stored vector at ``cosine`` to the query becomes a candidate."""
    p = math.acos(max(-1.0, min(1.0, cosine))) / math.pi
    b = bits_per_table
    table = sum(math.comb(b, i) * p**i * (1 - p) ** (b - i) for i in range(nflip + 1))
    return 1.0 - (1.0 - table) ** n_tables


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


class BinaryLSHIndex(VectorIndex):
    """Sign-bit LSH with Hamming buckets and exact re-scoring of the candidates.

    Args:
        dim: Vector width.
        model_id: Model that produced the vectors.
        n_tables: Number of hash tables (code substrings).
        bits_per_table: Bits per table (1..64); the code has ``n_tables * bits_per_table`` bits (a
            multiple of 8).
        nflip: Bit flips probed around the query's bucket in every table (0..3).
        seed: Seed of the random rotation.
        query_batch: Queries re-scored at once (bounds memory: candidates x dim floats per batch).
    """

    kind: ClassVar[str] = "lsh"
    approximate: ClassVar[bool] = True

    def __init__(
        self,
        dim: int,
        model_id: str | None = None,
        n_tables: int = 8,
        bits_per_table: int = 16,
        nflip: int = 1,
        seed: int = 0,
        query_batch: int = 256,
        rotation: np.ndarray | None = None,
    ) -> None:
        super().__init__(dim, model_id)
        if n_tables < 1 or not 1 <= bits_per_table <= 64 or (n_tables * bits_per_table) % 8:
            raise IndexInputError(
                f"LSH needs n_tables >= 1, 1 <= bits_per_table <= 64 and n_tables * bits_per_table a "
                f"multiple of 8; got {n_tables} x {bits_per_table}"
            )
        if not 0 <= nflip <= 3:
            raise IndexInputError(f"nflip must be in 0..3, got {nflip}")
        self.n_tables, self.bits_per_table, self._nflip = int(n_tables), int(bits_per_table), int(nflip)
        self.seed, self.query_batch = int(seed), int(query_batch)
        self.n_bits = self.n_tables * self.bits_per_table
        if rotation is None:
            rotation = random_rotation(self.dim, self.n_bits, self.seed)
        if rotation.shape != (self.dim, self.n_bits):
            raise IndexInputError(f"LSH rotation has shape {rotation.shape}, expected {(self.dim, self.n_bits)}")
        self.rotation = np.ascontiguousarray(rotation, dtype=np.float32)
        self.vectors = np.zeros((0, self.dim), dtype=np.float32)
        self._live = np.zeros(0, dtype=bool)
        self._buckets = self._new_buckets()

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
    def parameters(self) -> dict[str, Any]:
        return {
            "n_tables": self.n_tables, "bits_per_table": self.bits_per_table, "nflip": self.nflip,
            "seed": self.seed,
        }

    def _new_buckets(self) -> Any:
        index = faiss.IndexBinaryMultiHash(self.n_bits, self.n_tables, self.bits_per_table)
        index.nflip = self.nflip
        return index

    def codes(self, x: np.ndarray) -> np.ndarray:
        """Packed sign bits ``(n, n_bits / 8)`` uint8 of vectors ``x``."""
        return np.packbits(x @ self.rotation > 0, axis=1)

    def _add(self, x: np.ndarray, rows: np.ndarray) -> None:
        if int(rows[0]) != len(self.vectors):
            raise IndexInputError(f"LSH rows must be sequential: expected {len(self.vectors)}, got {rows[0]}")
        self._buckets.add(self.codes(x))
        self.vectors = np.concatenate([self.vectors, x]) if len(self.vectors) else x.copy()
        self._live = np.concatenate([self._live, np.ones(len(x), dtype=bool)])

    def candidates(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(lims, rows): every live stored row sharing a probed bucket with each query."""
        lims, distances, rows = self._buckets.range_search(self.codes(q), self.n_bits + 1)
        lims = lims.astype(np.int64)
        rows = rows.astype(np.int64)
        keep = self._live[rows]
        if not keep.all():
            lims, _, rows = filter_range_hits(lims, distances, rows, keep)
        return lims, rows

    def _scored(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(lims, exact scores, rows) of all candidates, batch by batch."""
        all_lims, all_scores, all_rows = [np.zeros(1, dtype=np.int64)], [], []
        offset = 0
        for start in range(0, len(q), self.query_batch):
            qb = q[start:start + self.query_batch]
            lims, rows = self.candidates(qb)
            qi = np.repeat(np.arange(len(qb)), np.diff(lims))
            scores = np.einsum("ij,ij->i", self.vectors[rows], qb[qi]) if len(rows) else np.zeros(0, np.float32)
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
        return self._scored(q)  # the caller keeps score >= threshold

    def _remove(self, rows: np.ndarray) -> None:
        self._live[rows] = False

    def _reconstruct(self, rows: np.ndarray) -> np.ndarray:
        return self.vectors[rows]

    def _write(self, directory: Path) -> list[str]:
        flat = faiss.IndexFlatIP(self.dim)
        if len(self.vectors):
            flat.add(self.vectors)
        faiss.write_index(flat, str(directory / INDEX_FILE))
        np.save(directory / ROTATION_FILE, self.rotation, allow_pickle=False)
        return [INDEX_FILE, ROTATION_FILE]

    @classmethod
    def _read(cls, directory: Path, manifest: dict[str, Any]) -> BinaryLSHIndex:
        p = manifest.get("parameters", {})
        rotation = np.load(directory / ROTATION_FILE, allow_pickle=False)
        index = cls(
            manifest["dim"], manifest.get("model_id"), n_tables=p.get("n_tables", 8),
            bits_per_table=p.get("bits_per_table", 16), nflip=p.get("nflip", 1), seed=p.get("seed", 0),
            rotation=rotation,
        )
        flat = faiss.read_index(str(directory / INDEX_FILE))
        if flat.d != index.dim:
            raise IndexInputError(f"{directory / INDEX_FILE} holds {flat.d}-dim vectors, manifest says {index.dim}")
        vectors = flat.reconstruct_n(0, flat.ntotal) if flat.ntotal else np.zeros((0, index.dim), np.float32)
        index.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if len(vectors):
            index._buckets.add(index.codes(index.vectors))
        index._live = np.ones(len(vectors), dtype=bool)
        return index

    def _after_load(self) -> None:
        """Tombstones are the holes of the id map."""
        live = self.idmap.live_mask()
        if len(live) != len(self.vectors):
            raise IndexInputError(
                f"LSH index holds {len(self.vectors)} vectors but ids.parquet covers {len(live)} rows"
            )
        self._live = live
