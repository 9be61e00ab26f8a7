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

import functools
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from reformer_retrieval.config import ReformerConfig
from reformer_retrieval.model.chunked_attention import chunked_attention_combined, full_attention
from reformer_retrieval.model.compiled_training import (
    compile_failed,
    compiled_available,
    compiled_chunked_attention,
)
from reformer_retrieval.model.flex_lsh import (
    auto_uses_flex,
    flex_available,
    flex_chunked_attention,
    flex_failed,
)

__all__ = [
    "PAD_BUCKET",
    "LSHSelfAttention",
    "SequenceInfo",
    "bucket_factor_tensor",
    "bucket_factors",
    "hash_buckets",
    "max_bucket_width",
    "rotation_width",
]

PAD_BUCKET = 1 << 30

HOST_READ_DEVICES = ("cpu",)
"""Device types whose tensors the hashing may read on the host (free there; a synchronisation elsewhere)."""


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


def _bucket_width(factors: tuple[int, ...]) -> int:
    """Rotation columns a bucket count uses: half of each factor."""
    return sum(f // 2 for f in factors)


def max_bucket_width(max_chunks: int, fixed: int | tuple[int, ...] | None = None, factorise_above: int = 128) -> int:
    """Rotation columns that cover the bucket count of every document of at most ``max_chunks`` chunks.

    The width is not monotonic in the length (a count above ``factorise_above`` is split into two smaller
    factors), so every count up to the longest is considered: counts only change at powers of two.
    """
    widths = [_bucket_width(bucket_factors(1, fixed, factorise_above))]
    n = 1
    while n <= max_chunks:
        widths.append(_bucket_width(bucket_factors(n, fixed, factorise_above)))
        n *= 2
    widths.append(_bucket_width(bucket_factors(max(1, max_chunks), fixed, factorise_above)))
    return max(widths)


@functools.lru_cache(maxsize=256)
def _hash_bounds(
    max_chunks: int, fixed: int | tuple[int, ...] | None, factorise_above: int
) -> tuple[int, bool]:
    """The static bounds `hash_buckets` takes for a batch padded to ``max_chunks`` chunks: the rotation width
    (`max_bucket_width`) and whether any document's count is split into two factors. They depend only on the
    config and the padded length, so they are computed once per (padded length, config), not per call."""
    width = max_bucket_width(max_chunks, fixed, factorise_above)
    split = any(len(bucket_factors(n, fixed, factorise_above)) > 1 for n in (max_chunks, 1))
    return width, split


def rotation_width(config: ReformerConfig) -> int:
    """Columns the rotation buffers need to cover every bucket count up to ``max_len``."""
    return max_bucket_width(config.max_len // config.chunk_size, config.num_buckets, config.bucket_factorise_above)


def bucket_factor_tensor(
    n_chunks: torch.Tensor, fixed: int | tuple[int, ...] | None = None, factorise_above: int = 128
) -> torch.Tensor:
    """`bucket_factors` of every document at once, on the device, without reading the counts on the host.

    Args:
        n_chunks: (B,) long, real chunks per document (at least 1).

    Returns:
        (B, 2) long: the first and second factor; the second is 1 when the count is not factorised.
    """
    if fixed is not None:
        f = tuple(fixed) if isinstance(fixed, tuple) else (int(fixed),)
        row = torch.tensor([f[0], f[1] if len(f) > 1 else 1], dtype=torch.long, device=n_chunks.device)
        return row.expand(n_chunks.shape[0], 2).clone()
    # largest power of two <= 2 n (at least 2): frexp's exponent e has 2^(e-1) <= 2n < 2^e, exactly
    _, exp = torch.frexp((2 * n_chunks.clamp(min=1)).double())
    log_b = (exp.long() - 1).clamp(min=1)
    b = torch.ones_like(log_b) << log_b
    split = b > factorise_above
    b1 = torch.ones_like(log_b) << (log_b // 2)
    first = torch.where(split, b1, b)
    second = torch.where(split, b // b1, torch.ones_like(b))
    return torch.stack([first, second], dim=1)


def _first_extreme(x: torch.Tensor, keep: torch.Tensor, offset: torch.Tensor, half: torch.Tensor) -> torch.Tensor:
    """``argmax([x; -x])`` over the columns ``keep`` (a contiguous range starting at ``offset``), as an index
    into that range: the first maximum, ties going to ``x`` (as `hash_buckets` always did on the slice)."""
    top, top_i = x.masked_fill(~keep, float("-inf")).max(dim=-1)
    low, low_i = x.masked_fill(~keep, float("inf")).min(dim=-1)
    return torch.where(top >= -low, top_i - offset, low_i - offset + half)


def _slice_extreme(part: torch.Tensor, half: int) -> torch.Tensor:
    """``argmax([part; -part])`` over the last axis: the first maximum, ties going to ``part``."""
    top, top_i = part.max(dim=-1)
    low, low_i = part.min(dim=-1)
    return torch.where(top >= -low, top_i, low_i + half)


def hash_buckets(
    qk: torch.Tensor,
    rotations: torch.Tensor,
    n_rounds: int,
    key_valid: torch.Tensor,
    factors: torch.Tensor | list[tuple[int, ...]],
    width: int | None = None,
    split: bool | None = None,
) -> torch.Tensor:
    """Angular-LSH buckets of every position, per head and round.

    One batched product for every document and head (no Python loop over heads or bucket counts): every
    document is rotated by the first ``width`` columns, and each of its factors takes the argmax over its own
    columns (masked reductions; the same products and the same first-maximum ties as rotating each group of
    documents by its own columns). Off the CPU nothing is read back to the host (no synchronisation); on the
    CPU, where reading is free, a batch whose documents share one count skips the masks (same buckets).

    Args:
        qk: (B, H, L, d) vectors to hash (detached).
        rotations: (H, R_max, d, W) fixed random rotations.
        n_rounds: Hash rounds to use (a prefix of R_max).
        key_valid: (B, L) bool; padding gets ``PAD_BUCKET`` so it sorts after every real token.
        factors: Bucket factors of each document: (B, 2) long from `bucket_factor_tensor`, or a list of
            `bucket_factors` tuples.
        width: Columns to rotate by, at least every document's width (`max_bucket_width`); by default the
            widest document's from a list, the whole buffer for a tensor.
        split: Whether any document may have a second factor (False skips its reductions); by default read
            from a list, True for a tensor.

    Returns:
        (B, H, n_rounds, L) long tensor of bucket ids.
    """
    B, H, L, d = qk.shape
    if not isinstance(factors, torch.Tensor):
        width = width or max(_bucket_width(f) for f in factors)
        split = any(len(f) > 1 for f in factors) if split is None else split
        factors = torch.tensor([[f[0], f[1] if len(f) > 1 else 1] for f in factors], dtype=torch.long)
    factors = factors.to(qk.device)
    split = True if split is None else split
    uniform: tuple[int, int] | None = None
    if qk.device.type in HOST_READ_DEVICES:
        # reading the counts costs nothing on the host: when every document has the same count (one document,
        # a batch of equal lengths), rotate by its columns only and reduce plain slices (no masks)
        first, second = factors[:, 0], factors[:, 1]
        if bool((first == first[0]).all() & (second == second[0]).all()):
            uniform = (int(first[0]), int(second[0]))
            width, split = uniform[0] // 2 + uniform[1] // 2, uniform[1] > 1
    width = min(width or rotations.shape[-1], rotations.shape[-1])
    rot = rotations[:, :n_rounds, :, :width].float()  # (H, R, d, w)
    rot = rot.permute(0, 2, 1, 3).reshape(H, d, n_rounds * width)  # (H, d, R * w); w innermost for the reductions
    rotated = torch.matmul(qk.float(), rot).view(B, H, L, n_rounds, width)
    if uniform is not None:
        f1, f2 = uniform
        bucket = _slice_extreme(rotated[..., : f1 // 2], f1 // 2)
        if split:
            bucket.add_(_slice_extreme(rotated[..., f1 // 2 :], f2 // 2), alpha=f1)
        return bucket.transpose(-1, -2).masked_fill(~key_valid[:, None, None, :], PAD_BUCKET)
    half1, half2 = factors[:, 0] // 2, factors[:, 1] // 2  # half2 = 0: one factor
    col = torch.arange(width, device=qk.device)

    def cols(keep: torch.Tensor) -> torch.Tensor:  # (B, w) column mask -> (B, 1, 1, 1, w)
        return keep.view(B, 1, 1, 1, width)

    def per_doc(t: torch.Tensor) -> torch.Tensor:  # (B,) -> (B, 1, 1, 1), against (B, H, L, R)
        return t.view(B, 1, 1, 1)

    bucket = _first_extreme(rotated, cols(col < half1[:, None]), per_doc(torch.zeros_like(half1)), per_doc(half1))
    if split:
        keep2 = (col >= half1[:, None]) & (col < (half1 + half2)[:, None])
        second = _first_extreme(rotated, cols(keep2), per_doc(half1), per_doc(half2))
        bucket = torch.where(per_doc(half2 > 0), bucket + per_doc(factors[:, 0]) * second, bucket)
    bucket = bucket.transpose(-1, -2)  # (B, H, R, L)
    return bucket.masked_fill(~key_valid[:, None, None, :], PAD_BUCKET)


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
        self.compile_training = False
        """Run the training forward through `compiled_training` (a runtime switch, not part of the config:
        `ReformerEncoder.compile_attention_for_training`)."""

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
        where `AUTO_FLEX_FROM` says so for this device, mode and length (the measured defaults, see
        `reformer_retrieval.model.flex_lsh`); never with attention dropout, nor after a failed compile."""
        if self.attention_impl == "chunked" or (self.attention_dropout > 0.0 and self.training):
            return False
        if self.attention_impl == "auto" and not auto_uses_flex(x.device.type, self.training, x.shape[1]):
            return False
        return flex_available(x.device)

    def _n_real_chunks(self, info: SequenceInfo) -> torch.Tensor:
        ends = info.n_real if self.kind == "lsh" else info.real_end
        return ((ends + self.chunk - 1) // self.chunk).clamp(min=1)

    def compute_buckets(self, qk: torch.Tensor, info: SequenceInfo) -> torch.Tensor:
        """Buckets of ``qk`` (B, H, L, d) for the current number of rounds."""
        self.hash_calls += 1
        # per-document counts stay on the device (no host sync); the static bounds come from the padded length
        factors = bucket_factor_tensor(self._n_real_chunks(info), self.num_buckets, self.factorise_above)
        width, split = _hash_bounds(-(-info.length // self.chunk), self.num_buckets, self.factorise_above)
        # every bucket decision in float32, whatever autocast or the model's dtype: a vector must not depend on
        # the device or precision that computed it (a bf16 rotation flips near-tie buckets)
        with torch.autocast(device_type=qk.device.type, enabled=False):
            return hash_buckets(
                qk.detach(), self.rotations, self.n_rounds, info.key_valid, factors, width=width, split=split
            )

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
        args = (qk.reshape(B * H, L, d), v.reshape(B * H, L, d), perm, valid, nrc, self.chunk, self.before,
                self.after)
        kwargs = {"wrap": self.kind == "lsh", "dropout": self.attention_dropout, "training": self.training,
                  "budget": self.budget}
        # not with attention dropout: the reversible backward recomputes this forward compiled, and inductor's
        # dropout draws another mask than the eager no-grad forward did (the gradients would be wrong)
        if (self.compile_training and self.training and torch.is_grad_enabled() and not self.attention_dropout > 0.0
                and compiled_available(qk.device)):
            try:
                return compiled_chunked_attention()(*args, **kwargs).view(B, H, L, d)
            except Exception as exc:  # compilation impossible here: one line, then the eager path
                compile_failed(qk.device, exc)
        return chunked_attention_combined(*args, **kwargs).view(B, H, L, d)
