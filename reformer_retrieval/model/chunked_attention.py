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
    "chunked_attention_combined",
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
        (n, n_chunks, before + 1 + after) long tensor; slot order is [previous, self, next] (the order of
        `look_around`). Slots that would repeat a chunk already in the window are ``-1``; with ``wrap``, so
        are all slots of chunks past the real ones (only padding queries live there).
    """
    device = n_real_chunks.device
    c = torch.arange(n_chunks, device=device).unsqueeze(0).expand(n_real_chunks.shape[0], n_chunks)
    last = (n_real_chunks - 1).unsqueeze(1)
    empty = torch.full_like(c, -1)
    slots = [c]
    prev = None
    if before:
        first_prev = last if wrap else empty
        prev = torch.where(c == 0, first_prev.expand_as(c), c - 1)
        prev = torch.where(prev == c, empty, prev)
        slots.insert(0, prev)
    if after:
        last_next = torch.zeros_like(c) if wrap else empty
        nxt = torch.where(c == last, last_next, c + 1)
        nxt = torch.where(nxt >= n_chunks, empty, nxt)
        nxt = torch.where(nxt == c, empty, nxt)
        if prev is not None:
            nxt = torch.where(nxt == prev, empty, nxt)
        slots.append(nxt)
    out = torch.stack(slots, dim=-1)
    if wrap:
        # Chunks past the real ones hold only padding queries; `look_around` may reuse their storage for the
        # wrapped neighbour, so they claim no slot at all.
        out = out.masked_fill((c > last).unsqueeze(-1), -1)
    return out


def _pad_chunks(
    x: torch.Tensor, n_real_chunks: torch.Tensor, before: int, after: int, wrap: bool
) -> torch.Tensor:
    """Lay the chunks out once with ``before`` extra chunks in front and ``after`` behind: the neighbours
    that the first and last real chunks see (wrapped inside the real chunks when ``wrap``).

    With wrap-around, the last real chunk's successor (the first chunk) is written over the first padding
    chunk, whose keys no real query can see. Returns (n, before + n_chunks + after, c, ...).
    """
    n = x.shape[0]
    rows = torch.arange(n, device=x.device)
    last = (n_real_chunks - 1).clamp(min=0)
    parts = []
    if before:
        parts.append(x[rows, last].unsqueeze(1) if wrap else x[:, -1:])
    parts.append(x)
    if after:
        parts.append(x[:, :1])
    padded = torch.cat(parts, dim=1) if len(parts) > 1 else x
    if after and wrap:
        # the first chunk after each row's last real one; for a row without padding chunks that is the appended
        # copy of its first chunk already, so every row is written (no host read of which rows are short)
        padded[rows, last + before + 1] = x[:, 0]
    return padded


def look_around(x: torch.Tensor, n_real_chunks: torch.Tensor, before: int, after: int, wrap: bool) -> torch.Tensor:
    """Each chunk with its neighbours, following `window_slot_chunks` (empty slots hold junk).

    Args:
        x: (n, n_chunks, c, ...) chunked tensor.
        n_real_chunks: (n,) real chunks per row.

    Returns:
        (n, n_chunks, (before + 1 + after) * c, ...), a view of `_pad_chunks`.
    """
    c = x.shape[2]
    width = (before + 1 + after) * c
    flat = _pad_chunks(x, n_real_chunks, before, after, wrap).flatten(1, 2)
    return flat.unfold(1, width, c).movedim(-1, 2)


def _attend_slots(
    scores: list[torch.Tensor], values: list[torch.Tensor], dropout: float, training: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over the keys of several slots at once (scores[s]: (M, c, c_s), values[s]: (M, c_s, d)).

    Same math as one softmax over the concatenated slots, without concatenating them. The normalisation is
    applied to the output rather than to the probabilities (one pass fewer over the scores); with gradients
    off the scores are exponentiated in place.
    """
    grad = any(x.requires_grad for x in scores)
    m = torch.stack([x.detach().amax(dim=-1) for x in scores]).amax(dim=0).unsqueeze(-1)
    exps = [torch.exp(x - m) if grad else x.sub_(m).exp_() for x in scores]
    total = exps[0].sum(dim=-1, keepdim=True)
    for e in exps[1:]:
        total = total + e.sum(dim=-1, keepdim=True)
    lse = (m + torch.log(total)).squeeze(-1)
    out = None
    for e, v in zip(exps, values):
        if dropout > 0.0 and training:
            e = F.dropout(e, dropout, training=True)
        part = torch.matmul(e.to(v.dtype), v)
        out = part if out is None else out + part
    return out / total.to(out.dtype), lse


def _scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """``q @ k^T`` promoted to at least float32 (never downcast)."""
    logits = torch.matmul(q, k.transpose(-1, -2))
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


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
    logits = _scores(qk, k)
    bias = torch.zeros(key_valid.shape, dtype=logits.dtype, device=qk.device)
    logits = logits + bias.masked_fill_(~key_valid, MASK_PAD)[:, None, None, :]
    logits.diagonal(dim1=-2, dim2=-1).fill_(MASK_SELF)
    out, _ = _attend_slots([logits], [v], dropout, training)
    return out


def _slot_attention(
    q: torch.Tensor,
    keys: list[torch.Tensor],
    values: list[torch.Tensor],
    ok: list[torch.Tensor],
    self_slot: int,
    dropout: float,
    training: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked attention of (M, c, d) query chunks over their window slots (keys[s], values[s]: (M, c, d);
    ok[s]: (M, c) bool, False for masked keys); the query's own key is the diagonal of slot ``self_slot``."""
    scores = []
    for slot, (k, slot_ok) in enumerate(zip(keys, ok)):
        logits = _scores(q, k)  # (M, c, c)
        # a fully valid slot skips the bias on the CPU, where the test costs no synchronisation (and not while
        # compiling, where reading a tensor would split the graph)
        if q.device.type != "cpu" or torch.compiler.is_compiling() or not bool(slot_ok.all()):
            bias = torch.zeros(slot_ok.shape, dtype=logits.dtype, device=q.device).masked_fill_(~slot_ok, MASK_PAD)
            logits = logits + bias.unsqueeze(1)
        if slot == self_slot:
            logits.diagonal(dim1=-2, dim2=-1).fill_(MASK_SELF)
        scores.append(logits)
    return _attend_slots(scores, values, dropout, training)


def _fused_ok(qk: torch.Tensor, v: torch.Tensor, dropout: float, training: bool) -> bool:
    """Whether the fused CPU kernel may run: no autograd, no dropout, a CPU float type it supports."""
    grad = torch.is_grad_enabled() and (qk.requires_grad or v.requires_grad)
    return (
        not grad
        and not (dropout > 0.0 and training)
        and qk.device.type == "cpu"
        and qk.dtype in (torch.float32, torch.bfloat16, torch.float64)
        and hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu")
    )


def _self_bias(q_rng: torch.Tensor, c: int, width: int, self_slot: int) -> torch.Tensor:
    """(1, 1, c, width) additive mask of the fused kernel: ``MASK_SELF`` where a query meets its own key (the
    diagonal of window slot ``self_slot``), 0 elsewhere."""
    bias = q_rng.new_zeros(c, width)
    bias[:, self_slot * c : (self_slot + 1) * c].fill_diagonal_(MASK_SELF)
    return bias[None, None]


def _fused_windows(
    q_rng: torch.Tensor, kp: torch.Tensor, vp: torch.Tensor, M: int, n_slots: int, self_slot: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of the M query chunks ``q_rng`` over their windows ``kp[t : t + n_slots]`` with PyTorch's
    fused CPU attention kernel: the windows are zero-copy overlapping views of the padded layout and no score
    tensor is materialised. The self key gets the additive bias ``MASK_SELF`` (exp() of it is 0 next to any
    other key); windows with masked keys must be redone by the caller.

    Returns ((M, c, d), (M, c) logsumexp, float32 or wider).
    """
    c, d = q_rng.shape[1:]
    width = n_slots * c
    # one window per batch entry, one head: the kernel runs 10-20% faster than with the windows as heads
    kw = kp.as_strided((M, 1, width, d), (c * d, 0, d, 1), kp.storage_offset())
    vw = vp.as_strided((M, 1, width, d), (c * d, 0, d, 1), vp.storage_offset())
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q_rng.unsqueeze(1), kw, vw, 0.0, False, attn_mask=_self_bias(q_rng, c, width, self_slot), scale=1.0
    )
    return out[:, 0], lse[:, 0].to(torch.promote_types(q_rng.dtype, torch.float32))


def _fused_train_ok(qk: torch.Tensor, v: torch.Tensor, dropout: float, training: bool) -> bool:
    """Whether the fused CPU kernel may run with gradients (`_FusedWindowsFn`): no dropout, float32 / float64,
    and PyTorch's fused CPU attention backward available."""
    return (
        not (dropout > 0.0 and training)
        and qk.device.type == "cpu"
        and qk.dtype in (torch.float32, torch.float64)
        and hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward")
        and not torch.compiler.is_compiling()  # the compiled path (`compiled_training`) fuses the slot math
    )


class _FusedWindowsFn(torch.autograd.Function):
    """`_fused_windows` with gradients: PyTorch's fused CPU attention backward over the same overlapping
    window views, window gradients of the keys and values folded back onto the padded layout (one add per
    slot).

    The logsumexp's gradient (the rounds are combined through it) enters the fused backward, which only
    takes the output's, through one extra value column: with values ``[v, 1]`` (queries and keys ``[x, 0]``)
    and that column's output gradient 1, passing the output column ``1 - dlse`` makes the kernel's row term
    ``sum(dout * out)`` equal ``delta - dlse``, so its score gradient is ``p * (dp - delta + dlse)``, the
    exact gradient of ``out`` and ``lse`` together.
    """

    @staticmethod
    def forward(ctx, q_rng, kp, vp, M, n_slots, self_slot):  # type: ignore[override]
        out, lse = _fused_windows(q_rng, kp, vp, M, n_slots, self_slot)
        ctx.save_for_backward(q_rng, kp, vp, out, lse)
        ctx.shape = (M, n_slots, self_slot)
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):  # type: ignore[override]
        q_rng, kp, vp, out, lse = ctx.saved_tensors
        M, n_slots, self_slot = ctx.shape
        c, d = q_rng.shape[1:]
        width = n_slots * c
        if dout is None:
            dout = torch.zeros_like(out)
        if dlse is None:
            dlse = torch.zeros_like(lse)
        zero_col = q_rng.new_zeros(*kp.shape[:2], 1)
        qx = torch.cat([q_rng, zero_col[:M]], dim=-1)
        kx = torch.cat([kp, zero_col], dim=-1)
        vx = torch.cat([vp, torch.ones_like(zero_col)], dim=-1)
        kw = kx.as_strided((M, 1, width, d + 1), (c * (d + 1), 0, d + 1, 1))
        vw = vx.as_strided((M, 1, width, d + 1), (c * (d + 1), 0, d + 1, 1))
        outx = torch.cat([out, (1.0 - dlse.to(out.dtype)).unsqueeze(-1)], dim=-1)
        doutx = torch.cat([dout, torch.ones_like(dout[..., :1])], dim=-1)
        gq, gk, gv = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            doutx[:, None], qx[:, None], kw, vw, outx[:, None], lse[:, None], 0.0, False,
            attn_mask=_self_bias(q_rng, c, width, self_slot), scale=1.0,
        )
        dk = torch.zeros_like(kp)
        dv = torch.zeros_like(vp)
        for s in range(n_slots):  # window slot s of query chunk t is chunk t + s of the padded layout
            dk[s : s + M] += gk[:, 0, s * c : (s + 1) * c, :d]
            dv[s : s + M] += gv[:, 0, s * c : (s + 1) * c, :d]
        return gq[:, 0, :, :d], dk, dv, None, None, None


class _SortRows(torch.autograd.Function):
    """``out[j] = x[rows[j], perm[j]]``: rows of ``x`` (N, L, d) sorted by a permutation, several rounds per
    row. The gradient gathers by the inverse permutation and sums the rounds of each row (no scatter over
    positions)."""

    @staticmethod
    def forward(ctx, x, rows, perm, inv):  # type: ignore[override]
        N, L, d = x.shape
        flat = (rows.unsqueeze(1) * L + perm).reshape(-1)
        ctx.save_for_backward(rows, inv)
        ctx.n_rows = N
        return x.reshape(N * L, d).index_select(0, flat).view(perm.shape[0], L, d)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        rows, inv = ctx.saved_tensors
        unsorted = _gather_rows(grad, inv)
        out = grad.new_zeros((ctx.n_rows, *grad.shape[1:]))
        return out.index_add_(0, rows, unsorted), None, None, None


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
    T = before + nc + after  # chunks per row in the padded layout
    n_slots = before + 1 + after
    flat_perm = perm.reshape(N * R, L)
    item_row = torch.arange(N * R, device=qk.device) // R
    step = max(1, budget // max(1, L * n_slots * chunk))
    outs: list[torch.Tensor] = []
    lses: list[torch.Tensor] = []
    for start in range(0, N * R, step):
        rows = item_row[start : start + step]
        p = flat_perm[start : start + step]
        inv = inverse_permutation(p)
        n = p.shape[0]
        nrc = n_real_chunks.index_select(0, rows)

        def padded(x: torch.Tensor, rows=rows, p=p, inv=inv, nrc=nrc, n=n) -> torch.Tensor:
            sorted_chunks = _SortRows.apply(x, rows, p, inv).view(n, nc, chunk, -1)
            return _pad_chunks(sorted_chunks, nrc, before, after, wrap).reshape(n * T, chunk, -1)

        # Every chunk's window is `n_slots` consecutive chunks of the padded layout, so the scores of slot s
        # are one batched product of two contiguous ranges of it (no window is ever copied). The range covers
        # M = n*T - before - after query chunks; the few that straddle two rows are junk and dropped at the end.
        qp, vp = padded(qk), padded(v)
        kp = F.normalize(qp, dim=-1, eps=1e-6)  # row-wise: the same as sorting and padding normalised keys
        M = n * T - before - after
        q_rng = qp[before : before + M]
        valid_p = _pad_chunks(
            key_valid.index_select(0, rows).gather(1, p).view(n, nc, chunk), nrc, before, after, wrap
        ).reshape(n * T, chunk)
        slot_ok = torch.zeros((n, T, n_slots), dtype=torch.bool, device=qk.device)
        slot_ok[:, before : before + nc] = window_slot_chunks(nc, nrc, before, after, wrap) >= 0
        slot_ok = slot_ok.view(n * T, n_slots)[before : before + M]
        # keys of slot s for query chunk t (padded index t + before) sit at padded index t + s
        ok = [valid_p[s : s + M] & slot_ok[:, s : s + 1] for s in range(n_slots)]  # (M, c) each
        fused = _fused_ok(qk, v, dropout, training)
        if fused or _fused_train_ok(qk, v, dropout, training):
            if fused:
                out_rng, lse_rng = _fused_windows(q_rng, kp, vp, M, n_slots, before)
            else:
                out_rng, lse_rng = _FusedWindowsFn.apply(q_rng, kp, vp, M, n_slots, before)
            # windows holding a masked key (padding, a repeated or an empty slot) are redone exactly below
            bad = (~torch.stack(ok, dim=1).flatten(1).all(dim=1)).nonzero().squeeze(1)
            if bad.numel():
                o, s_ = _slot_attention(
                    q_rng[bad], [kp[bad + s] for s in range(n_slots)], [vp[bad + s] for s in range(n_slots)],
                    [x[bad] for x in ok], before, 0.0, False,
                )
                if fused:
                    out_rng[bad] = o
                    lse_rng[bad] = s_.to(lse_rng.dtype)
                else:  # out of place: the fused backward saved the kernel's own rows
                    out_rng = out_rng.index_put((bad,), o)
                    lse_rng = lse_rng.index_put((bad,), s_.to(lse_rng.dtype))
        else:
            out_rng, lse_rng = _slot_attention(
                q_rng, [kp[s : s + M] for s in range(n_slots)], [vp[s : s + M] for s in range(n_slots)], ok,
                before, dropout, training,
            )
        # Back to original order with one row gather: item j's sorted position i is row j*T*c + i of the range
        # (query chunk t of the range is chunk t + before of the padded layout).
        idx = (inv + (torch.arange(n, device=qk.device) * (T * chunk)).unsqueeze(1)).reshape(-1)
        outs.append(out_rng.reshape(M * chunk, d).index_select(0, idx).view(n, L, d))
        lses.append(lse_rng.reshape(M * chunk).index_select(0, idx).view(n, L))
    if len(outs) == 1:
        return outs[0].view(N, R, L, d), lses[0].view(N, R, L)
    return torch.cat(outs, 0).view(N, R, L, d), torch.cat(lses, 0).view(N, R, L)


def chunked_attention_combined(
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
) -> torch.Tensor:
    """`chunked_attention` then `combine_rounds`, a group of rows at a time: per-round outputs are held for
    one group only (``R * L * d`` floats per row instead of ``N * R * L * d``). Returns (N, L, d)."""
    N, L, _ = qk.shape
    R = perm.shape[1]
    width = (before + 1 + after) * chunk
    group = max(1, budget // max(1, R * L * width))
    outs = [
        combine_rounds(
            *chunked_attention(
                qk[i : i + group], v[i : i + group], perm[i : i + group], key_valid[i : i + group],
                n_real_chunks[i : i + group], chunk, before, after, wrap, dropout, training, budget,
            )
        )
        for i in range(0, N, group)
    ]
    return outs[0] if len(outs) == 1 else torch.cat(outs, 0)


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
