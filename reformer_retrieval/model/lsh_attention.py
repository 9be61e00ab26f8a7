"""LSH self-attention with shared query-key (Kitaev et al. 2020), bidirectional, for an encoder.

Hashing is angular LSH: ``bucket = argmax([xR; -xR])`` with a random rotation ``R`` per head and hash round.
The rotations are drawn once, at construction, from a generator seeded by ``config.hash_seed`` and the layer
index, and kept as buffers saved with the model: the same input always lands in the same buckets, and no
global random state is read or written.

Bucket counts follow each document's own length (about two buckets per chunk, a power of two, split into two
factors when large, as in trax and Hugging Face), never the batch's padded length, so a document's embedding
does not depend on its batch companions or on padding. Rotations of the full width are stored and each count
uses a prefix of the columns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from reformer_retrieval.config import ReformerConfig
from reformer_retrieval.model.chunked_attention import chunked_attention_combined, full_attention
from reformer_retrieval.model.flex_lsh import (
    AUTO_FLEX_TRAIN_LENGTH,
    flex_available,
    flex_chunked_attention,
    flex_failed,
)

__all__ = [
    "PAD_BUCKET",
    "LSHSelfAttention",
    "SequenceInfo",
    "bucket_factors",
    "hash_buckets",
    "rotation_width",
]

PAD_BUCKET = 1 << 30


@dataclass
class SequenceInfo:
    """Per-batch facts every attention layer needs, computed once per forward.

    Attributes:
        key_valid: (B, L) bool, True at real tokens (L is the padded length).
        n_real: (B,) number of real tokens.
        real_end: (B,) one past the last real position.
    """

    key_valid: torch.Tensor
    n_real: torch.Tensor
    real_end: torch.Tensor

    @classmethod
    def from_mask(cls, key_valid: torch.Tensor) -> SequenceInfo:
        """Build from a (B, L) bool mask."""
        n_real = key_valid.sum(dim=1)
        positions = torch.arange(1, key_valid.shape[1] + 1, device=key_valid.device)
        real_end = (key_valid.long() * positions).amax(dim=1)
        return cls(key_valid=key_valid, n_real=n_real, real_end=real_end)

    @property
    def length(self) -> int:
        """Padded length."""
        return self.key_valid.shape[1]


def bucket_factors(
    n_chunks: int, fixed: int | tuple[int, ...] | None = None, factorise_above: int = 128
) -> tuple[int, ...]:
    """Bucket count for a document spanning ``n_chunks`` chunks, as one or two even factors.

    About two buckets per chunk (mean bucket = half a chunk, as in the paper), rounded down to a power of two
    (at least 2); counts above ``factorise_above`` are split into two factors ``b1 <= b2``.
    """
    if fixed is not None:
        return tuple(fixed) if isinstance(fixed, tuple) else (int(fixed),)
    b = max(2, 1 << (max(1, 2 * n_chunks).bit_length() - 1))
    if b <= factorise_above:
        return (b,)
    b1 = 1 << (int(math.log2(b)) // 2)
    return (b1, b // b1)


def rotation_width(config: ReformerConfig) -> int:
    """Columns the rotation buffers need to cover every bucket count up to ``max_len``."""
    max_chunks = config.max_len // config.chunk_size
    widths = [sum(f // 2 for f in bucket_factors(1, config.num_buckets, config.bucket_factorise_above))]
    n = 1
    while n <= max_chunks:
        widths.append(sum(f // 2 for f in bucket_factors(n, config.num_buckets, config.bucket_factorise_above)))
        n *= 2
    widths.append(
        sum(f // 2 for f in bucket_factors(max_chunks, config.num_buckets, config.bucket_factorise_above))
    )
    return max(widths)


def hash_buckets(
    qk: torch.Tensor,
    rotations: torch.Tensor,
    n_rounds: int,
    key_valid: torch.Tensor,
    factors: list[tuple[int, ...]],
) -> torch.Tensor:
    """Angular-LSH buckets of every position, per head and round.

    Args:
        qk: (B, H, L, d) vectors to hash (detached).
        rotations: (H, R_max, d, W) fixed random rotations.
        n_rounds: Hash rounds to use (a prefix of R_max).
        key_valid: (B, L) bool; padding gets ``PAD_BUCKET`` so it sorts after every real token.
        factors: Bucket factors of each document (see `bucket_factors`).

    Returns:
        (B, H, n_rounds, L) long tensor of bucket ids.
    """
    B, H, L, _ = qk.shape
    groups: dict[tuple[int, ...], list[int]] = {}
    for b, f in enumerate(factors):
        groups.setdefault(f, []).append(b)
    out: torch.Tensor | None = None
    for f, members in groups.items():
        idx = torch.tensor(members, device=qk.device)
        width = sum(x // 2 for x in f)
        x = qk.index_select(0, idx) if len(groups) > 1 else qk
        rot = rotations[:, :n_rounds, :, :width].float()  # (H, R, d, w)
        rot = rot.permute(0, 2, 1, 3).reshape(H, rot.shape[2], n_rounds * width)  # (H, d, R * w)
        per_head = []
        for h in range(H):  # one (b * L, d) x (d, R * w) GEMM per head; w innermost for the reductions
            rotated = torch.matmul(x[:, h].float(), rot[h]).view(x.shape[0], L, n_rounds, width)
            bucket: torch.Tensor | None = None
            offset, scale = 0, 1
            for n_b in f:
                part = rotated[..., offset : offset + n_b // 2]
                # argmax over [part, -part] without building it: the first maximum, ties going to ``part``
                top, top_i = part.max(dim=-1)
                low, low_i = part.min(dim=-1)
                arg = torch.where(top >= -low, top_i, low_i + n_b // 2)
                bucket = arg * scale if bucket is None else bucket.add_(arg, alpha=scale)
                offset += n_b // 2
                scale *= n_b
            assert bucket is not None
            per_head.append(bucket.transpose(1, 2))  # (b, R, L)
        bucket = torch.stack(per_head, dim=1)  # (b, H, R, L)
        valid = key_valid.index_select(0, idx)[:, None, None, :]
        bucket = bucket.masked_fill(~valid, PAD_BUCKET)
        if len(groups) == 1:
            return bucket
        if out is None:
            out = torch.full((B, H, n_rounds, L), PAD_BUCKET, dtype=torch.long, device=qk.device)
        out[idx] = bucket
    assert out is not None
    return out


def sort_by_buckets(buckets: torch.Tensor) -> torch.Tensor:
    """Stable sorted order per round: key ``bucket * L + position``; returns (..., L) permutations."""
    L = buckets.shape[-1]
    key = buckets * L + torch.arange(L, device=buckets.device)
    return torch.argsort(key, dim=-1)


class LSHSelfAttention(nn.Module):
    """Pre-norm shared-QK attention block: LayerNorm -> (LSH or local) attention -> output projection.

    Args:
        config: The model config.
        layer_idx: Position in the stack (seeds the rotations).
        kind: ``"lsh"`` (hashed buckets, rounds combined) or ``"local"`` (chunks in position order).
    """

    def __init__(self, config: ReformerConfig, layer_idx: int, kind: str = "lsh") -> None:
        super().__init__()
        self.kind = kind
        self.n_heads = config.n_heads
        self.head_dim = config.head_dim
        self.chunk = config.chunk_size if kind == "lsh" else config.local_chunk
        self.before = config.chunks_before
        self.after = config.chunks_after
        self.n_hashes = config.n_hashes
        self.n_hashes_eval = config.eval_hashes
        self.num_buckets = config.num_buckets
        self.factorise_above = config.bucket_factorise_above
        self.dropout = config.dropout
        self.attention_dropout = config.attention_dropout
        self.budget = config.attention_budget
        self.attention_impl = config.attention_impl
        inner = self.n_heads * self.head_dim
        self.norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.query_key = nn.Linear(config.d_model, inner, bias=False)
        self.value = nn.Linear(config.d_model, inner, bias=False)
        self.dense = nn.Linear(inner, config.d_model)
        if kind == "lsh":
            gen = torch.Generator().manual_seed(config.hash_seed * 1_000_003 + layer_idx)
            shape = (self.n_heads, config.max_hashes, self.head_dim, rotation_width(config))
            self.register_buffer("rotations", torch.randn(shape, generator=gen), persistent=True)
        self.hash_calls = 0

    @property
    def n_rounds(self) -> int:
        """Hash rounds in the current mode (training or evaluation)."""
        return self.n_hashes if self.training else self.n_hashes_eval

    def _full_path_fits(self, n_chunks: int) -> bool:
        """Whether every query's window already covers every real key (exact attention is then identical)."""
        if self.kind == "lsh":
            return n_chunks <= 1 + self.before + self.after
        return n_chunks <= 1 + min(self.before, self.after)

    def _use_flex(self, x: torch.Tensor) -> bool:
        """Whether this call runs the FlexAttention kernel: with ``attention_impl="flex"``, or with ``"auto"``
        for CPU training from `AUTO_FLEX_TRAIN_LENGTH` tokens (the measured default, see
        `reformer_retrieval.model.flex_lsh`); never with attention dropout, nor after a failed compile."""
        if self.attention_impl == "chunked" or (self.attention_dropout > 0.0 and self.training):
            return False
        if self.attention_impl == "auto" and not (
            self.training and x.device.type == "cpu" and x.shape[1] >= AUTO_FLEX_TRAIN_LENGTH
        ):
            return False
        return flex_available(x.device)

    def _n_real_chunks(self, info: SequenceInfo) -> torch.Tensor:
        ends = info.n_real if self.kind == "lsh" else info.real_end
        return ((ends + self.chunk - 1) // self.chunk).clamp(min=1)

    def compute_buckets(self, qk: torch.Tensor, info: SequenceInfo) -> torch.Tensor:
        """Buckets of ``qk`` (B, H, L, d) for the current number of rounds."""
        self.hash_calls += 1
        n_chunks = self._n_real_chunks(info).tolist()
        factors = [bucket_factors(n, self.num_buckets, self.factorise_above) for n in n_chunks]
        # every bucket decision in float32, whatever autocast or the model's dtype: a vector must not depend on
        # the device or precision that computed it (a bf16 rotation flips near-tie buckets)
        with torch.autocast(device_type=qk.device.type, enabled=False):
            return hash_buckets(qk.detach(), self.rotations, self.n_rounds, info.key_valid, factors)

    def _apply(self, fn: Any, recurse: bool = True) -> LSHSelfAttention:
        """`nn.Module._apply` (``.to``, ``.half``, ``.cuda`` ...) that moves the rotations to the new device but
        keeps them float32: casting them to bf16 / fp16 would round the hash planes and change buckets."""
        rotations = getattr(self, "rotations", None)
        super()._apply(fn, recurse)
        if rotations is not None and self.rotations.dtype != rotations.dtype:
            self.rotations = rotations.to(device=self.rotations.device)
        return self

    def forward(
        self, x: torch.Tensor, info: SequenceInfo, buckets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attend over ``x`` (B, L, d_model).

        Args:
            x: Input stream.
            info: Padding facts of the batch.
            buckets: Buckets from an earlier call on the same input (the reversible backward passes them
                so that the recomputation attends exactly as the forward did).

        Returns:
            ``(output, buckets)``; ``buckets`` is None when the exact path or local attention was used.
        """
        B, L, _ = x.shape
        h = self.norm(x)
        qk = self.query_key(h).view(B, L, self.n_heads, self.head_dim).transpose(1, 2)
        v = self.value(h).view(B, L, self.n_heads, self.head_dim).transpose(1, 2)
        if self._full_path_fits(L // self.chunk):
            out = full_attention(qk, v, info.key_valid, self.attention_dropout, self.training)
            buckets = None
        else:
            H, d = self.n_heads, self.head_dim
            if self.kind == "lsh":
                if buckets is None:
                    buckets = self.compute_buckets(qk, info)
                perm = sort_by_buckets(buckets).reshape(B * H, -1, L)
            else:
                perm = torch.arange(L, device=x.device).expand(B * H, 1, L)
            valid = info.key_valid.repeat_interleave(H, dim=0)
            nrc = self._n_real_chunks(info).repeat_interleave(H, dim=0)
            out = None
            if self._use_flex(x):
                try:
                    out = flex_chunked_attention(
                        qk.reshape(B * H, L, d), v.reshape(B * H, L, d), perm, valid, nrc, self.chunk,
                        self.before, self.after, wrap=self.kind == "lsh", budget=self.budget,
                    ).view(B, H, L, d)
                except Exception as exc:  # compilation impossible here: one line, then the masked path
                    flex_failed(x.device, exc)
            if out is None:
                out = self._chunked(qk, v, perm, valid, nrc)
        out = out.transpose(1, 2).reshape(B, L, self.n_heads * self.head_dim)
        out = F.dropout(self.dense(out), self.dropout, self.training)
        return out, buckets

    def _chunked(
        self, qk: torch.Tensor, v: torch.Tensor, perm: torch.Tensor, valid: torch.Tensor, nrc: torch.Tensor
    ) -> torch.Tensor:
        """The masked / fused chunked attention path; (B, H, L, d)."""
        B, H, L, d = qk.shape
        return chunked_attention_combined(
            qk.reshape(B * H, L, d), v.reshape(B * H, L, d), perm, valid, nrc, self.chunk, self.before, self.after,
            wrap=self.kind == "lsh", dropout=self.attention_dropout, training=self.training, budget=self.budget,
        ).view(B, H, L, d)
