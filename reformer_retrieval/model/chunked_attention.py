"""The functional core shared by LSH and local attention: sort, chunk, attend to neighbours, un-sort.

All functions here are pure (no module state, no RNG except the optional attention dropout), so they can be
tested against brute-force references and `gradcheck`.

Conventions (per document, per head, per hash round):

* A round is a permutation ``perm`` of the ``L`` positions. Real tokens come first (padding is hashed into
  its own last bucket), so a document with ``n`` real tokens occupies the first ``ceil(n / c)`` chunks of
  length ``c``: its *real chunks*.
* Queries in chunk ``i`` attend the keys of chunk ``i`` and of ``chunks_before`` / ``chunks_after``
  neighbouring chunks of the same round. With ``wrap=True`` (LSH) neighbours wrap around inside the real
  chunks, so the first chunk sees the last real chunk and the last real chunk sees the first; a chunk never
  appears twice in one window. Neither the window nor the result depends on how much padding follows.
* Keys are the queries divided by their norm (shared query-key attention); logits are computed in float32.
  Padding and duplicate window slots are masked with ``MASK_PAD``; a query's own position with the finite
  ``MASK_SELF``, applied after the padding mask, so a query with nothing else to attend returns its own value.
* Rounds are combined with weights ``softmax_r(logsumexp_r)``, the exact softmax over the union of the rounds'
  windows when they are disjoint.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "MASK_PAD",
    "MASK_SELF",
    "PermuteRows",
    "chunked_attention",
    "combine_rounds",
    "full_attention",
    "inverse_permutation",
    "look_around",
    "window_slot_chunks",
]

MASK_PAD = -1e9
MASK_SELF = -1e5


def inverse_permutation(perm: torch.Tensor) -> torch.Tensor:
    """Inverse of permutations along the last axis: ``inv[..., perm[..., i]] = i``."""
    inv = torch.empty_like(perm)
    ar = torch.arange(perm.shape[-1], device=perm.device).expand_as(perm)
    return inv.scatter_(-1, perm, ar)


def _gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``out[n, i] = x[n, index[n, i]]`` for ``x`` of shape (n, L) or (n, L, d)."""
    if x.dim() == 2:
        return x.gather(1, index)
    return x.gather(1, index.unsqueeze(-1).expand(*index.shape, x.shape[-1]))


class PermuteRows(torch.autograd.Function):
    """Gather rows by a permutation; the gradient is a gather by the inverse permutation.

    Gathers are cheaper than the scatter autograd would otherwise use for the backward.
    ``PermuteRows.apply(x, perm, inv)`` returns ``x[n, perm[n, i]]``.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, perm: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(inv)
        return _gather_rows(x, perm)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (inv,) = ctx.saved_tensors
        return _gather_rows(grad, inv), None, None


def window_slot_chunks(
    n_chunks: int, n_real_chunks: torch.Tensor, before: int, after: int, wrap: bool
) -> torch.Tensor:
    """Chunk index seen in each window slot, ``-1`` where the slot is empty.

    Args:
        n_chunks: Chunks in the padded sequence.
        n_real_chunks: (n,) real chunks per row (at least 1).
        before, after: Neighbouring chunks (0 or 1 each).
        wrap: Wrap neighbours around inside the real chunks.

    Returns:
        (n, n_chunks, 1 + before + after) long tensor; slot order is [self, previous, next]. Slots that
        would repeat a chunk already in the window are ``-1``.
    """
    device = n_real_chunks.device
    c = torch.arange(n_chunks, device=device).unsqueeze(0).expand(n_real_chunks.shape[0], n_chunks)
    last = (n_real_chunks - 1).unsqueeze(1)
    slots = [c]
    empty = torch.full_like(c, -1)
    if before:
        first_prev = last if wrap else empty
        prev = torch.where(c == 0, first_prev.expand_as(c), c - 1)
        prev = torch.where(prev == c, empty, prev)
        slots.append(prev)
    if after:
        last_next = torch.zeros_like(c) if wrap else empty
        nxt = torch.where(c == last, last_next, c + 1)
        nxt = torch.where(nxt >= n_chunks, empty, nxt)
        nxt = torch.where(nxt == c, empty, nxt)
        if before:
            nxt = torch.where(nxt == slots[1], empty, nxt)
        slots.append(nxt)
    return torch.stack(slots, dim=-1)


def look_around(x: torch.Tensor, n_real_chunks: torch.Tensor, before: int, after: int, wrap: bool) -> torch.Tensor:
    """Concatenate each chunk with its neighbours, following `window_slot_chunks` (empty slots hold junk).

    Args:
        x: (n, n_chunks, c, ...) chunked tensor.
        n_real_chunks: (n,) real chunks per row.

    Returns:
        (n, n_chunks, (1 + before + after) * c, ...).
    """
    parts = [x]
    rows = torch.arange(x.shape[0], device=x.device)
    last = (n_real_chunks - 1).clamp(min=0)
    if before:
        prev = torch.roll(x, 1, dims=1)
        if wrap:
            prev[:, 0] = x[rows, last]
        parts.append(prev)
    if after:
        nxt = torch.roll(x, -1, dims=1)
        if wrap:
            nxt[rows, last] = x[:, 0]
        parts.append(nxt)
    out = torch.stack(parts, dim=2)  # (n, nc, slots, c, ...)
    return out.flatten(2, 3)


def _masked_softmax_attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_ok: torch.Tensor,
    is_self: torch.Tensor,
    dropout: float,
    training: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention over given keys with float32 logits; returns (output, logsumexp)."""
    logits = torch.matmul(q, k.transpose(-1, -2))
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # float32 at least, never downcast
    logits = logits.masked_fill(~key_ok, MASK_PAD)
    logits = logits.masked_fill(is_self, MASK_SELF)
    lse = torch.logsumexp(logits, dim=-1, keepdim=True)
    probs = torch.exp(logits - lse)
    if dropout > 0.0 and training:
        probs = F.dropout(probs, dropout, training=True)
    out = torch.matmul(probs.to(v.dtype), v)
    return out, lse.squeeze(-1)


def full_attention(
    qk: torch.Tensor, v: torch.Tensor, key_valid: torch.Tensor, dropout: float = 0.0, training: bool = False
) -> torch.Tensor:
    """Exact shared-QK attention over all real keys (the short-input path; same math as the chunked one).

    Args:
        qk: (B, H, L, d) shared query-keys; v: (B, H, L, d) values.
        key_valid: (B, L) bool, False at padding.

    Returns:
        (B, H, L, d) outputs.
    """
    k = F.normalize(qk, dim=-1, eps=1e-6)
    L = qk.shape[2]
    key_ok = key_valid[:, None, None, :]
    is_self = torch.eye(L, dtype=torch.bool, device=qk.device)[None, None]
    out, _ = _masked_softmax_attend(qk, k, v, key_ok, is_self, dropout, training)
    return out


def chunked_attention(
    qk: torch.Tensor,
    v: torch.Tensor,
    perm: torch.Tensor,
    key_valid: torch.Tensor,
    n_real_chunks: torch.Tensor,
    chunk: int,
    before: int,
    after: int,
    wrap: bool,
    dropout: float = 0.0,
    training: bool = False,
    budget: int = 1 << 24,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention inside chunks of each round's sorted order, one round at a time per row.

    Args:
        qk: (N, L, d) shared query-keys, v: (N, L, d) values (N = batch * heads).
        perm: (N, R, L) the sorted order of each round (real tokens first).
        key_valid: (N, L) bool, False at padding.
        n_real_chunks: (N,) real chunks per row.
        chunk: Chunk length; L must be a multiple of it.
        budget: Largest number of logits computed at once (rows are processed in slices; results are equal).

    Returns:
        ``(out, lse)``: per-round outputs (N, R, L, d) and logsumexps (N, R, L), in original order.
    """
    N, L, d = qk.shape
    R = perm.shape[1]
    nc = L // chunk
    width = (1 + before + after) * chunk
    flat_perm = perm.reshape(N * R, L)
    item_row = torch.arange(N * R, device=qk.device) // R
    step = max(1, budget // max(1, L * width))
    outs: list[torch.Tensor] = []
    lses: list[torch.Tensor] = []
    for start in range(0, N * R, step):
        rows = item_row[start : start + step]
        p = flat_perm[start : start + step]
        inv = inverse_permutation(p)
        n = p.shape[0]
        nrc = n_real_chunks.index_select(0, rows)
        sq = PermuteRows.apply(qk.index_select(0, rows), p, inv)
        sv = PermuteRows.apply(v.index_select(0, rows), p, inv)
        sk = F.normalize(sq, dim=-1, eps=1e-6)
        q_c = sq.view(n, nc, chunk, d)
        k_w = look_around(sk.view(n, nc, chunk, d), nrc, before, after, wrap)
        v_w = look_around(sv.view(n, nc, chunk, d), nrc, before, after, wrap)
        pos_c = p.view(n, nc, chunk)
        pos_w = look_around(pos_c, nrc, before, after, wrap)  # (n, nc, width)
        slot = window_slot_chunks(nc, nrc, before, after, wrap)  # (n, nc, slots)
        slot_ok = (slot >= 0).repeat_interleave(chunk, dim=-1)
        valid = key_valid.index_select(0, rows)
        key_ok = valid.gather(1, pos_w.reshape(n, -1)).view(n, nc, width) & slot_ok
        # Empty slots hold copies of other chunks (possibly the query's own): only occupied slots count as self,
        # so a copy never turns a padding-masked slot into a self-masked one.
        is_self = (pos_w.unsqueeze(2) == pos_c.unsqueeze(3)) & slot_ok.unsqueeze(2)  # (n, nc, c, width)
        out, lse = _masked_softmax_attend(q_c, k_w, v_w, key_ok.unsqueeze(2), is_self, dropout, training)
        outs.append(PermuteRows.apply(out.reshape(n, L, d), inv, p))
        lses.append(PermuteRows.apply(lse.reshape(n, L), inv, p))
    out = torch.cat(outs, 0).view(N, R, L, d)
    lse = torch.cat(lses, 0).view(N, R, L)
    return out, lse


def combine_rounds(out: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """Combine hash rounds: ``sum_r softmax_r(lse)[r] * out[r]``.

    Args:
        out: (N, R, L, d); lse: (N, R, L) float32.

    Returns:
        (N, L, d) in the dtype of ``out``.
    """
    if out.shape[1] == 1:
        return out[:, 0]
    weights = torch.softmax(lse, dim=1).unsqueeze(-1)
    acc = torch.promote_types(out.dtype, torch.float32)
    return (out.to(acc) * weights.to(acc)).sum(dim=1).to(out.dtype)
