"""The lexical channel in numpy: the hashed n-gram bag of a WHOLE document, without the Reformer forward.

`HashedNgrams` (torch) is the trainable form of the lexical channel: it reads the ids the Reformer reads (at
most ``max_len`` tokens) and its log-weights learn by backpropagation. At encoding time the channel needs no
gradient and no attention, so `LexicalSketch` computes the same vector from the module's buffers and weights in
numpy, over every token of the document however long it is (two long documents that share their first 64 KB
differ here), streaming the ids in blocks so memory stays bounded by the block and the document's distinct
n-grams. It runs on the host whatever device the contextual channel runs on, so a lexical vector does not
depend on the device (the sums run in float64 in a fixed order, as in `HashedNgrams`).

The hash, the term-frequency rule, the weights and the projection are those of `HashedNgrams`; for a document
within ``max_len`` tokens the two agree to float32 rounding (tests/model/test_lexical.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

__all__ = ["LexicalSketch"]

_PRIME = (1 << 31) - 1
_BLOCK = 1 << 20
"""Tokens hashed at a time (plus the ``n - 1`` before them): bounds the temporary arrays."""


class LexicalSketch:
    """Numpy form of a `HashedNgrams` module: one unit vector per token-id sequence.

    Args:
        n: Tokens per n-gram.
        buckets: Number of hash buckets (rows of ``log_weight``).
        dim: Width of the channel.
        multipliers: The n-gram hash multipliers (``n`` int64 values).
        log_weight: The per-bucket log pooling weights (float32, ``buckets`` values).
        tf: ``"raw"``, ``"log"`` or ``"binary"``.
        pad_token_id: Id read before the first position.
        sketch_multipliers: The four count-sketch hash constants (``projection="sketch"``), or ``None``.
        table: The ``buckets x dim`` vector table (``projection="table"``), or ``None``.
    """

    def __init__(
        self,
        n: int,
        buckets: int,
        dim: int,
        multipliers: np.ndarray,
        log_weight: np.ndarray,
        tf: str,
        pad_token_id: int = 0,
        sketch_multipliers: np.ndarray | None = None,
        table: np.ndarray | None = None,
    ) -> None:
        if (sketch_multipliers is None) == (table is None):
            raise ValueError("give exactly one of sketch_multipliers (count sketch) and table (vector table)")
        self.n = int(n)
        self.buckets = int(buckets)
        self.dim = int(dim)
        self.multipliers = np.asarray(multipliers, dtype=np.int64)
        self.log_weight = np.asarray(log_weight, dtype=np.float32)
        self.tf = tf
        self.pad_token_id = int(pad_token_id)
        self.sketch_multipliers = None if sketch_multipliers is None else np.asarray(sketch_multipliers, np.int64)
        self.table = None if table is None else np.asarray(table, dtype=np.float32)
        self._pow2 = self.buckets & (self.buckets - 1) == 0
        self._term_table: np.ndarray | None = None
        self._coordinate: np.ndarray | None = None
        self._signed_weight: np.ndarray | None = None

    @classmethod
    def from_module(cls, module: object) -> LexicalSketch:
        """The sketch of a `HashedNgrams` module (its current weights, copied to the host)."""
        sketch = getattr(module, "sketch_multipliers", None)
        table = module.embedding.weight if module.embedding is not None else None  # type: ignore[attr-defined]
        return cls(
            n=module.n,  # type: ignore[attr-defined]
            buckets=module.buckets,  # type: ignore[attr-defined]
            dim=module.dim,  # type: ignore[attr-defined]
            multipliers=module.multipliers.detach().cpu().numpy(),  # type: ignore[attr-defined]
            log_weight=module.log_weight.detach().float().cpu().numpy(),  # type: ignore[attr-defined]
            tf=module.tf,  # type: ignore[attr-defined]
            pad_token_id=module.pad_token_id,  # type: ignore[attr-defined]
            sketch_multipliers=None if sketch is None else sketch.detach().cpu().numpy(),
            table=None if table is None else table.detach().float().cpu().numpy(),
        )

    # ------------------------------------------------------------------ hashing
    def _terms(self, vocab: int) -> np.ndarray:
        """``(n, vocab)`` int64: ``id * multiplier_k mod p`` for every id below ``vocab`` (grown on demand), so an
        n-gram's hash is a sum of n table reads and one ``mod`` (equal to `HashedNgrams`' running ``mod``)."""
        if self._term_table is None or self._term_table.shape[1] < vocab:
            ids = np.arange(max(vocab, 512), dtype=np.int64)
            self._term_table = (ids[None, :] * self.multipliers[:, None]) % _PRIME
        return self._term_table

    def bucket_ids(self, ids: np.ndarray) -> np.ndarray:
        """Bucket of the n-gram ending at every position of one sequence (positions before it read the pad id)."""
        blocks = list(self._bucket_blocks(np.asarray(ids)))
        return np.concatenate(blocks).astype(np.int64) if blocks else np.zeros(0, np.int64)

    def _bucket_blocks(self, ids: np.ndarray) -> Iterable[np.ndarray]:
        n = self.n
        if len(ids) and (int(ids.min()) < 0):
            raise ValueError("token ids must be non-negative")
        terms = self._terms(int(max(ids.max(), self.pad_token_id)) + 1 if len(ids) else self.pad_token_id + 1)
        for start in range(0, len(ids), _BLOCK):
            stop = min(len(ids), start + _BLOCK)
            before = ids[max(0, start - (n - 1)) : start]
            head = np.full(n - 1 - len(before), self.pad_token_id, dtype=ids.dtype)
            window = np.concatenate([head, before, ids[start:stop]])
            length = stop - start
            h = np.zeros(length, dtype=np.int64)
            for k in range(n):
                offset = n - 1 - k
                h += terms[k][window[offset : offset + length]]
            h %= _PRIME
            if self._pow2:
                h &= self.buckets - 1
            else:
                h %= self.buckets
            yield h.astype(np.int32) if self.buckets <= np.iinfo(np.int32).max else h

    def counts(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The distinct buckets of one sequence (sorted) and how often each occurs, merged block by block."""
        distinct: np.ndarray | None = None
        counts = np.zeros(0, dtype=np.int64)
        for block in self._bucket_blocks(np.asarray(ids)):
            b, c = np.unique(block, return_counts=True)
            if distinct is not None and len(distinct):
                distinct, inverse = np.unique(np.concatenate([distinct, b]), return_inverse=True)
                counts = np.bincount(inverse, weights=np.concatenate([counts, c]), minlength=len(distinct))
                counts = counts.astype(np.int64)
            else:
                distinct, counts = b, c
        if distinct is None:
            return np.zeros(0, dtype=np.int64), counts
        return distinct, counts

    def _sketch_tables(self) -> tuple[np.ndarray, np.ndarray]:
        """Per bucket: its count-sketch coordinate (int32) and its signed weight ``sign * exp(log_weight - max)``
        (float64: no underflow for low weights), computed once."""
        if self._coordinate is None:
            a, b, c, d = (int(x) for x in self.sketch_multipliers)  # type: ignore[union-attr]
            buckets = np.arange(self.buckets, dtype=np.int64)
            self._coordinate = (((buckets * a + b) % _PRIME) % self.dim).astype(np.int32)
            sign = 1.0 - 2.0 * (((buckets * c + d) % _PRIME) % 2).astype(np.float64)
            log_weight = self.log_weight.astype(np.float64)
            self._signed_weight = sign * np.exp(log_weight - log_weight.max())
        return self._coordinate, self._signed_weight  # type: ignore[return-value]

    # ------------------------------------------------------------------ vectors
    def vector(self, ids: np.ndarray) -> np.ndarray:
        """The channel of one token-id sequence: a float32 unit vector (the zero vector for no tokens)."""
        distinct, counts = self.counts(ids)
        out = np.zeros(self.dim, dtype=np.float32)
        if not len(distinct):
            return out
        if self.tf == "raw":
            tf = counts.astype(np.float64)
        elif self.tf == "log":
            tf = 1.0 + np.log(counts.astype(np.float64))
        else:
            tf = np.ones(len(counts), dtype=np.float64)
        if self.sketch_multipliers is not None:
            coordinate, signed_weight = self._sketch_tables()
            bag = np.bincount(coordinate[distinct], weights=tf * signed_weight[distinct], minlength=self.dim)
        else:
            log_weight = self.log_weight[distinct].astype(np.float64)
            weights = tf * np.exp(log_weight - log_weight.max())
            bag = (self.table[distinct].astype(np.float64) * weights[:, None]).sum(axis=0)  # type: ignore[index]
        norm = float(np.sqrt(np.dot(bag, bag)))
        return (bag / norm).astype(np.float32) if norm > 0 else out

    def vectors(self, sequences: Sequence[np.ndarray]) -> np.ndarray:
        """(len(sequences), dim) float32 unit vectors, one per sequence."""
        out = np.zeros((len(sequences), self.dim), dtype=np.float32)
        for i, ids in enumerate(sequences):
            out[i] = self.vector(ids)
        return out
