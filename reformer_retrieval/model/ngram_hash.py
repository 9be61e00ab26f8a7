"""Hashed n-gram channel: a learned, idf-weighted bag of the document's n-grams.

Near-duplicate detection needs the identity of a document's text, not only its style. Two different articles in
one language share their style, and a mean of smooth contextual features converges to that style as documents
grow (all documents end up at cosine 0.99 to each other). So a model with ``ngram_size`` > 0 adds a second
channel to its embedding, as fastText and CANINE use hashed n-grams: every position's n-gram of tokens (the
n tokens ending there) is hashed by a seeded universal hash

    h(i) = (sum_k ids[i - k] * a_k  mod  (2^31 - 1))  mod  buckets,   k = 0 .. n - 1

(positions before the start read the pad id) into a table of learned vectors and a table of learned
log-weights, and the channel is the weighted sum of the vectors over the document, L2-normalised. The trainer
starts the log-weights at ``power * log(idf)`` over training documents (`idf_log_weights`), so before any
training the channel is a random projection of the document's tf-idf vector of hashed n-grams; contrastive
training then moves the vectors and weights (noisy spellings of one n-gram can learn to point the same way).

Two settings choose how the bag is made:

* ``tf`` (term frequency): ``"raw"`` weighs every occurrence of an n-gram (a bucket seen k times counts k
  times); ``"log"`` weighs each distinct bucket of a document by ``1 + ln k``; ``"binary"`` by 1 (the
  document's *set* of n-grams, as MinHash sees it). Repetition says little about whether two documents are
  copies of each other: on the Wikipedia-revisions dev set, exact tf-idf cosines of byte 5-grams rank
  near-duplicate pairs with best F1 0.873 (raw), 0.920 (log), 0.921 (binary) (benchmarks/ngram_channel.py).
* ``projection``: ``"table"`` looks each bucket's vector up in a learned ``buckets x dim`` table;
  ``"sketch"`` has no table: each bucket adds its weight, with a seeded random sign, to one seeded random
  coordinate of the ``dim``-wide channel (a count sketch, or signed feature hashing). The sketch is an
  unbiased random projection of the document's weighted n-gram vector that costs no memory per bucket, so
  the buckets can be many (2^20: almost no two n-grams of a corpus share one, and the idf stays exact)
  while the channel is wide (the projection's error shrinks as 1/sqrt(dim)); only the log-weights are learned.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reformer_retrieval.config import NGRAM_PROJECTIONS, NGRAM_TF

__all__ = ["HashedNgrams", "idf_log_weights"]

_PRIME = (1 << 31) - 1


class HashedNgrams(nn.Module):
    """The n-gram vectors (a table or a count sketch), the per-bucket log-weights and the hash of both.

    Args:
        n: Tokens per n-gram (>= 1).
        buckets: Rows of the log-weight table (and of the vector table with ``projection="table"``).
        dim: Width of the n-gram vectors (the channel's width).
        seed: Seed of the hash multipliers (saved as buffers, so a loaded model hashes as it was trained).
        pad_token_id: Id read before the first position.
        tf: How often a bucket occurs in a document counts: ``"raw"``, ``"log"`` or ``"binary"`` (module doc).
        projection: ``"table"`` (learned vectors) or ``"sketch"`` (seeded signed coordinates, no table).

    Table vectors start as unit-variance Gaussians: the channel is L2-normalised, so their scale is free, and at
    unit scale an optimizer step (about ``lr`` per entry with Adam) moves them little, so fine-tuning refines the
    random projection instead of replacing it.
    """

    embedding: nn.Embedding | None

    def __init__(
        self, n: int, buckets: int, dim: int, seed: int, pad_token_id: int = 0, tf: str = "raw",
        projection: str = "table",
    ) -> None:
        super().__init__()
        if tf not in NGRAM_TF:
            raise ValueError(f"tf={tf!r}: must be one of {NGRAM_TF}")
        if projection not in NGRAM_PROJECTIONS:
            raise ValueError(f"projection={projection!r}: must be one of {NGRAM_PROJECTIONS}")
        self.n = int(n)
        self.buckets = int(buckets)
        self.dim = int(dim)
        self.pad_token_id = int(pad_token_id)
        self.tf = tf
        self.projection = projection
        gen = torch.Generator().manual_seed(int(seed) + 0x5EED)
        multipliers = torch.randint(1, _PRIME, (self.n,), generator=gen, dtype=torch.int64)
        self.register_buffer("multipliers", multipliers)
        self.embedding = None
        if projection == "table":
            self.embedding = nn.Embedding(self.buckets, dim)
        else:  # coordinate hash (a, b) and sign hash (a, b) of every bucket, drawn after the n-gram hash
            self.register_buffer("sketch_multipliers", torch.randint(1, _PRIME, (4,), generator=gen, dtype=torch.int64))
        self.log_weight = nn.Parameter(torch.zeros(self.buckets))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Unit Gaussian vectors (from the global torch generator, as every other weight) and zero log-weights."""
        if self.embedding is not None:
            nn.init.normal_(self.embedding.weight, std=1.0)
        nn.init.zeros_(self.log_weight)

    def bucket_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(batch, length) long bucket of the n-gram ending at every position."""
        ids = input_ids.to(torch.int64)
        length = ids.shape[1]
        padded = F.pad(ids, (self.n - 1, 0), value=self.pad_token_id)
        h = torch.zeros_like(ids)
        for k in range(self.n):
            start = self.n - 1 - k
            h = (h + padded[:, start : start + length] * self.multipliers[k]) % _PRIME
        return h % self.buckets

    def sketch_coordinates(self, buckets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The count sketch of buckets (``projection="sketch"``): each bucket's coordinate in ``[0, dim)`` and its
        sign (+1.0 or -1.0), from two seeded universal hashes of the bucket id."""
        a, b, c, d = (self.sketch_multipliers[i] for i in range(4))
        coordinate = ((buckets * a + b) % _PRIME) % self.dim
        sign = 1.0 - 2.0 * (((buckets * c + d) % _PRIME) % 2).to(torch.float32)
        return coordinate, sign

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The channel: (batch, dim) unit vectors, the weighted bag of n-gram vectors of the real tokens (``mask``
        True); a row with no real token gets the zero vector."""
        buckets = self.bucket_ids(input_ids)
        if self.tf == "raw" and self.projection == "table":  # every occurrence, looked up in place
            log_weight = self.log_weight[buckets].float().masked_fill(~mask, float("-inf"))
            weights = torch.exp(log_weight - _row_top(log_weight))
            table = self.embedding.weight
            bag = F.embedding_bag(buckets, table, per_sample_weights=weights.to(table.dtype), mode="sum")
            return F.normalize(bag.float(), dim=-1)
        rows, distinct, weights = self.weighted_buckets(buckets, mask)
        if self.projection == "table":
            table = self.embedding.weight
            offsets = _offsets(rows, buckets.shape[0])
            bag = F.embedding_bag(distinct, table, offsets, per_sample_weights=weights.to(table.dtype), mode="sum")
        else:
            coordinate, sign = self.sketch_coordinates(distinct)
            bag = _segment_sum(rows * self.dim + coordinate, weights * sign, buckets.shape[0] * self.dim)
            bag = bag.view(buckets.shape[0], self.dim)
        return F.normalize(bag.float(), dim=-1)

    def weighted_buckets(
        self, buckets: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The weighted bag of every row before projection: (row, bucket, weight) of the distinct buckets of the
        row's real positions (``mask`` True), sorted by row, then bucket.

        Args:
            buckets: (batch, length) bucket ids (`bucket_ids`).
            mask: (batch, length) bool, True at real tokens.

        Returns:
            The rows, buckets and float32 weights ``tf(count) * exp(log_weight)``, each row's weights divided by
            its largest ``exp(log_weight)`` (a scale the normalised channel does not see).
        """
        rows, distinct, counts = _distinct_buckets(buckets, mask, self.buckets)
        if self.tf == "raw":
            tf = counts.to(torch.float32)
        elif self.tf == "log":
            tf = 1.0 + torch.log(counts.to(torch.float32))
        else:
            tf = torch.ones_like(counts, dtype=torch.float32)
        log_weight = self.log_weight[distinct].float()
        top = torch.full((buckets.shape[0],), float("-inf"), device=log_weight.device)
        top = top.scatter_reduce(0, rows, log_weight.detach(), "amax")
        top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        return rows, distinct, tf * torch.exp(log_weight - top[rows])

    @torch.no_grad()
    def set_log_weights(self, log_weight: np.ndarray | torch.Tensor) -> None:
        """Overwrite the pooling log-weights (one per bucket)."""
        values = torch.as_tensor(log_weight).detach().to(self.log_weight)
        if values.shape != self.log_weight.shape:
            raise ValueError(f"expected {tuple(self.log_weight.shape)} log-weights, got {tuple(values.shape)}")
        self.log_weight.copy_(values)


def _row_top(log_weight: torch.Tensor) -> torch.Tensor:
    """Each row's largest log-weight (0 for a row with none), detached: weights are relative within a document,
    so subtracting it before ``exp`` changes nothing but the range."""
    top = log_weight.detach().amax(dim=1, keepdim=True)
    return torch.where(torch.isfinite(top), top, torch.zeros_like(top))


def _distinct_buckets(
    buckets: torch.Tensor, mask: torch.Tensor, n_buckets: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The distinct buckets of every row's real positions: (row, bucket, occurrences), sorted by row, then bucket."""
    rows = torch.arange(buckets.shape[0], device=buckets.device).unsqueeze(1).expand_as(buckets)
    keys, counts = torch.unique((rows * n_buckets + buckets)[mask], sorted=True, return_counts=True)
    return keys // n_buckets, keys % n_buckets, counts


def _offsets(rows: torch.Tensor, batch: int) -> torch.Tensor:
    """`F.embedding_bag` offsets of entries sorted by row: where each of ``batch`` rows starts."""
    per_row = torch.bincount(rows, minlength=batch)
    return torch.cumsum(per_row, 0) - per_row


def _segment_sum(keys: torch.Tensor, values: torch.Tensor, size: int) -> torch.Tensor:
    """``out[k] = sum(values[keys == k])`` for k in ``[0, size)``, summed in a fixed order (sorted keys, a float64
    running sum), so the result is the same on every run and device (``index_add_`` on CUDA adds atomically, in
    no fixed order)."""
    keys, order = torch.sort(keys, stable=True)
    running = torch.cumsum(values[order].to(torch.float64), 0)
    distinct, counts = torch.unique_consecutive(keys, return_counts=True)
    totals = running[torch.cumsum(counts, 0) - 1]
    sums = torch.cat([totals[:1], totals[1:] - totals[:-1]])
    out = torch.zeros(size, dtype=torch.float64, device=values.device)
    return out.index_put((distinct,), sums).to(torch.float32)


def idf_log_weights(ngrams: HashedNgrams, sequences: Iterable[np.ndarray], power: float = 2.0) -> np.ndarray:
    """Log pooling weights ``power * log(idf)`` of every bucket, idf = ``log((1 + N) / (1 + df)) + 1``.

    Args:
        ngrams: The module whose hash is used.
        sequences: Token-id arrays, one per document (or window); each counts once per bucket it contains.
        power: Exponent of the idf in the weight (2 weighs a pooled n-gram like tf * idf^2, which ranks
            near-duplicate pairs best in our measurements; 1 is plain tf-idf).

    Returns:
        A float32 array with one value per bucket.

    Raises:
        ValueError: when no sequence was given.
    """
    df = np.zeros(ngrams.buckets, dtype=np.int64)
    count = 0
    for seq in sequences:
        ids = torch.as_tensor(np.asarray(seq, dtype=np.int64)).reshape(1, -1)
        if ids.shape[1] == 0:
            continue
        df[np.unique(ngrams.bucket_ids(ids).numpy())] += 1
        count += 1
    if count == 0:
        raise ValueError("idf_log_weights needs at least one non-empty sequence")
    idf = np.log((1.0 + count) / (1.0 + df)) + 1.0
    return (power * np.log(idf)).astype(np.float32) if power else np.zeros(ngrams.buckets, np.float32)

