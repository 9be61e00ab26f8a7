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
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["HashedNgrams", "idf_log_weights"]

_PRIME = (1 << 31) - 1


class HashedNgrams(nn.Module):
    """The n-gram vector table, the per-bucket log-weights and the hash that indexes both.

    Args:
        n: Tokens per n-gram (>= 1).
        buckets: Rows of both tables.
        dim: Width of the n-gram vectors (the channel's width).
        seed: Seed of the hash multipliers (saved as a buffer, so a loaded model hashes as it was trained).
        pad_token_id: Id read before the first position.

    The vectors start as unit-variance Gaussians: the channel is L2-normalised, so their scale is free, and at
    unit scale an optimizer step (about ``lr`` per entry with Adam) moves them little, so fine-tuning refines the
    random projection instead of replacing it.
    """

    def __init__(self, n: int, buckets: int, dim: int, seed: int, pad_token_id: int = 0) -> None:
        super().__init__()
        self.n = int(n)
        self.buckets = int(buckets)
        self.pad_token_id = int(pad_token_id)
        gen = torch.Generator().manual_seed(int(seed) + 0x5EED)
        multipliers = torch.randint(1, _PRIME, (self.n,), generator=gen, dtype=torch.int64)
        self.register_buffer("multipliers", multipliers)
        self.embedding = nn.Embedding(self.buckets, dim)
        self.log_weight = nn.Parameter(torch.zeros(self.buckets))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Unit Gaussian vectors (from the global torch generator, as every other weight) and zero log-weights."""
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

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The channel: (batch, dim) unit vectors, the log-weighted sum of the n-gram vectors of the real tokens
        (``mask`` True); a row with no real token gets the zero vector."""
        buckets = self.bucket_ids(input_ids)
        log_weight = self.log_weight[buckets].float().masked_fill(~mask, float("-inf"))
        # weights are relative within a document: subtract its largest log-weight before exp
        top = log_weight.detach().amax(dim=1, keepdim=True)
        top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))  # a row with no real token
        weights = torch.exp(log_weight - top)
        table = self.embedding.weight
        bag = F.embedding_bag(buckets, table, per_sample_weights=weights.to(table.dtype), mode="sum")
        return F.normalize(bag.float(), dim=-1)

    @torch.no_grad()
    def set_log_weights(self, log_weight: np.ndarray | torch.Tensor) -> None:
        """Overwrite the pooling log-weights (one per bucket)."""
        values = torch.as_tensor(log_weight).detach().to(self.log_weight)
        if values.shape != self.log_weight.shape:
            raise ValueError(f"expected {tuple(self.log_weight.shape)} log-weights, got {tuple(values.shape)}")
        self.log_weight.copy_(values)


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

