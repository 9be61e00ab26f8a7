"""LSH and chunked local attention as block-sparse attention over the sorted sequence, on FlexAttention.

The same math as `reformer_retrieval.model.chunked_attention` (see its conventions), expressed for
`torch.nn.attention.flex_attention`:

* every (document, head, hash round) is one attention "head" over its bucket-sorted sequence;
* the block mask has block size = chunk: query chunk ``i`` sees the kv chunks of `window_slot_chunks`
  (the chunk itself and its neighbours, wrapping inside the document's real chunks for LSH, each once);
* padding keys are masked by ``mask_mod`` (a lookup of the sorted validity), the query's own key gets the
  finite ``MASK_SELF`` by ``score_mod`` (replaced, not added, as in the masked path), keys are the
  normalised queries (shared QK), scale 1;
* rounds are combined with the per-round logsumexps (``return_aux=AuxRequest(lse=True)``; ``return_lse``
  on torch without ``AuxRequest``), as `combine_rounds` does.

Lengths are padded to a power of two (the padded chunks have no kv block, so they cost nothing but the
sort) and the rows (documents x heads x rounds) ride in FlexAttention's batch dimension, marked dynamic, so a
corpus of mixed lengths compiles one kernel per padded length, never one per batch size; inductor's on-disk
cache serves later processes (`benchmarks/compile_cost.py`).

FlexAttention has no backward and no ``return_lse`` on CPU (torch 2.13); there the compiled kernel runs
with a sink key that recovers the logsumexp (`_flex_forward_sink`; the sink logit and the padding mask ride
in two extra query / key columns, so the kernel captures no tensor), without gradients straight from the
unsorted rows (`_flex_inference`), and with gradients under `_FlexWindowed`'s vectorised windowed backward.
On CUDA the kernel's own ``return_lse`` and backward are used.

Selection (``ReformerConfig.attention_impl``): ``"flex"`` always; ``"auto"`` where `AUTO_FLEX_FROM` names a
start length for the device and mode, which is nowhere: on the shared 2-core CPU (2 threads, d256 / 6 layers
/ 4 heads / chunk 64 / 4 hashes, `benchmarks/encoder_speed.py` side by side) flex runs inference at 4,509 /
2,466 tok/s (16K / 64K tokens) against 7,772 / 6,754 for the chunked path (PyTorch's fused CPU attention over
strided windows); training steps, one layer at 16K tokens (shared machine, load ~3), 3,966 tok/s against
6,281 for the chunked path's fused forward and backward (1 thread; with 2 threads flex 3,185 against 5,144
for the earlier masked path), and at the default model's shape (4 x 4,096 tokens, 1 thread) 4,692 vs 6,882. The compiled CPU flex kernel alone is 4.3x slower
than the fused kernel on the same windows. The CUDA formulation is checked on CPU only (eagerly); its GPU
speed is not measured, so CUDA stays on the chunked path too.
"""

from __future__ import annotations

import functools
import logging

import torch

from reformer_retrieval.model.chunked_attention import (
    MASK_PAD,
    MASK_SELF,
    PermuteRows,
    _SortRows,
    combine_rounds,
    inverse_permutation,
    window_slot_chunks,
)
from reformer_retrieval.model.compile_fallback import (
    compile_available,
    raise_recompile_limit,
    record_compile_failure,
)

__all__ = [
    "AUTO_FLEX_FROM",
    "auto_uses_flex",
    "flex_available",
    "flex_chunked_attention",
    "flex_failed",
    "padded_length",
]

AUTO_FLEX_FROM: dict[tuple[str, str], int | None] = {
    ("cpu", "inference"): None,
    ("cpu", "train"): None,
    ("cuda", "inference"): None,
    ("cuda", "train"): None,
}
"""Shortest input (tokens) from which ``attention_impl="auto"`` runs this kernel, per (device type, mode);
None: never (device types not listed: never). Chosen by measurement (module docstring, README)."""


def auto_uses_flex(device_type: str, training: bool, length: int) -> bool:
    """Whether ``attention_impl="auto"`` runs FlexAttention for an input of ``length`` tokens (`AUTO_FLEX_FROM`)."""
    start = AUTO_FLEX_FROM.get((device_type, "train" if training else "inference"))
    return start is not None and length >= start

log = logging.getLogger(__name__)

_STATE: dict[str, object] = {}


def padded_length(length: int, chunk: int) -> int:
    """Length the kernel runs at: the next power of two multiple of ``chunk`` (at least ``2 * chunk``)."""
    n = max(2, -(-length // chunk))
    return chunk * (1 << (n - 1).bit_length())


# one compiled kernel per length bucket (`padded_length`) and model shape; the rows (documents x heads x rounds)
# ride in FlexAttention's batch dimension, marked dynamic, so a new batch size does not recompile
_RECOMPILE_LIMIT = 64


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    raise_recompile_limit(_RECOMPILE_LIMIT)  # past it, dynamo falls back to eager
    return torch.compile(flex_attention, dynamic=False)


def _rows_dynamic(*tensors: torch.Tensor) -> None:
    """Mark dimension 0 (the rows) of every tensor the kernel reads as dynamic."""
    for t in tensors:
        torch._dynamo.maybe_mark_dynamic(t, 0)


def _run_kernel(q, k, v, score_mod, block_mask, return_lse: bool = False, compiled: bool = True):
    """FlexAttention over (rows, Lq, d) / (rows, Lkv, d) inputs, one row per batch entry, one head."""
    from torch.nn.attention.flex_attention import flex_attention

    q, k, v = q[:, None], k[:, None], v[:, None]
    if compiled:
        _rows_dynamic(q, k, v, *(t for t in block_mask.as_tuple() if isinstance(t, torch.Tensor)))
    fn = _compiled_flex() if compiled else flex_attention
    if not return_lse:
        return fn(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=1.0)[:, 0]
    aux_request = _aux_request_type()
    if aux_request is None:  # torch before AuxRequest: the logsumexp through ``return_lse``
        out, lse = fn(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=1.0, return_lse=True)
    else:  # ``return_lse`` is deprecated (a FutureWarning) where ``return_aux`` exists
        out, aux = fn(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=1.0,
                      return_aux=aux_request(lse=True))
        lse = aux.lse
    return out[:, 0], lse[:, 0]


@functools.cache
def _aux_request_type() -> type | None:
    """FlexAttention's ``AuxRequest`` (how newer torch asks for the logsumexp), None on torch without it."""
    try:
        from torch.nn.attention.flex_attention import AuxRequest
    except ImportError:
        return None
    return AuxRequest


def flex_available(device: torch.device | str = "cpu") -> bool:
    """Whether to try the FlexAttention kernel on ``device``: False once a compilation failed there in this
    process (see `flex_failed`), or when ``REFORMER_NO_FLEX=1`` is set in the environment."""
    return compile_available(_STATE, "REFORMER_NO_FLEX", device)


def flex_failed(device: torch.device | str, exc: BaseException) -> None:
    """Record that the kernel cannot run on ``device`` (no C++ compiler, unsupported device ...) and log one
    line; callers then use the masked path for the rest of the process."""
    record_compile_failure(_STATE, device, exc, log,
                           "FlexAttention cannot run on %s (%s: %s); using the masked attention path")


def _block_mask(
    slots: torch.Tensor, valid_sorted: torch.Tensor, chunk: int, length: int, backward: bool = False,
):
    """BlockMask (rows, 1, length, length) from window slots (rows, n_chunks, S) and sorted validity.

    ``backward``: also build the transposed (query-block) indices FlexAttention's own backward needs (the CPU
    sink kernel has its own mask, `_sink_block_mask`).
    """
    from torch.nn.attention.flex_attention import BlockMask

    rows, nc, _ = slots.shape
    chunk_full = valid_sorted.view(rows, nc, chunk).all(dim=-1)  # (rows, nc)
    used = slots >= 0
    idx = slots.clamp(min=0)
    full = used & chunk_full.gather(1, idx.view(rows, -1)).view_as(slots)
    partial = used & ~full

    def compact(sel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        num = sel.sum(dim=-1).to(torch.int32)
        key = torch.where(sel, idx, nc + idx)  # selected first, in block order
        order = key.sort(dim=-1).values
        order = torch.where(order >= nc, order - nc, order).to(torch.int32)
        # the kernels want one column per kv block
        order = torch.cat([order, order.new_zeros(rows, nc, nc - order.shape[-1])], dim=-1)
        return num[:, None], order[:, None]

    kv_num, kv_idx = compact(partial)
    full_num, full_idx = compact(full)

    n_slots = slots.shape[-1]

    def mask_mod(b, h, q_idx, kv_idx):
        # the window test repeats the block structure, so the mask is exact even where a kernel evaluates
        # mask_mod densely (eager FlexAttention)
        kv_chunk = kv_idx // chunk
        in_window = slots[b, q_idx // chunk, 0] == kv_chunk
        for s in range(1, n_slots):
            in_window = in_window | (slots[b, q_idx // chunk, s] == kv_chunk)
        return valid_sorted[b, kv_idx] & in_window

    return BlockMask.from_kv_blocks(
        kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=chunk, mask_mod=mask_mod,
        seq_lengths=(length, length), compute_q_blocks=backward,
    )


def _self_score_mod(score, b, h, q_idx, kv_idx):
    return torch.where(q_idx == kv_idx, torch.full_like(score, MASK_SELF), score)


def _flex_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask, compiled: bool = True):
    """FlexAttention with its logsumexp (CUDA, or eager anywhere): ((rows, L, d), (rows, L))."""
    return _run_kernel(q, k, v, _self_score_mod, block_mask, return_lse=True, compiled=compiled)


def _sink_block_mask(slots: torch.Tensor, chunk: int, length: int):
    """BlockMask (rows, 1, length, length + chunk) of the sink kernel: every used window slot and the sink
    block (index ``n_chunks``) as full blocks, no ``mask_mod`` (padding is masked by the keys' bias column,
    see `_flex_forward_sink`), so the compiled kernel captures no tensor and the rows can stay dynamic."""
    from torch.nn.attention.flex_attention import BlockMask

    rows, nc, _ = slots.shape
    n_kv = nc + 1
    idx = torch.cat([slots.clamp(min=0), torch.full_like(slots[..., :1], nc)], dim=-1)
    used = torch.cat([slots >= 0, torch.ones_like(slots[..., :1], dtype=torch.bool)], dim=-1)
    num = used.sum(dim=-1).to(torch.int32)
    order = torch.where(used, idx, n_kv + idx).sort(dim=-1).values  # used first, in block order
    order = torch.where(order >= n_kv, order - n_kv, order).to(torch.int32)
    order = torch.cat([order, order.new_zeros(rows, nc, n_kv - order.shape[-1])], dim=-1)
    empty_num = torch.zeros_like(num)
    empty_idx = torch.zeros_like(order)
    return BlockMask.from_kv_blocks(
        empty_num[:, None], empty_idx[:, None], num[:, None], order[:, None], BLOCK_SIZE=chunk,
        seq_lengths=(length, length + chunk),
    )


def _sink_key_block(rows: int, chunk: int, d: int, like: torch.Tensor) -> torch.Tensor:
    """The sink block of the extended keys (rows, chunk, d + 2): the sink key ``[0, 0, 1]`` (its logit is the
    query's ``|q|`` column), then keys masked by the bias column."""
    block = like.new_zeros(rows, chunk, d + 2)
    block[:, 0, d + 1] = 1.0
    block[:, 1:, d] = MASK_PAD
    return block


def _sink_attention(qq: torch.Tensor, kk: torch.Tensor, vv: torch.Tensor, slots: torch.Tensor, chunk: int):
    """Run the compiled sink kernel on extended inputs: queries (rows, Lp, d + 2) ``[q, 1, |q|]``, keys
    (rows, Lp + chunk, d + 2) ``[k, bias, 0]`` then `_sink_key_block`, values (rows, Lp + chunk, d + 1)
    ``[v, valid]`` then zeros; slots (rows, Lp / chunk, S) with empty slots for padding chunks. The only
    ``score_mod`` is the query's own key set to ``MASK_SELF``. Returns (rows, Lp, d + 1)."""
    length = qq.shape[1]
    return _run_kernel(qq, kk, vv, _self_score_mod, _sink_block_mask(slots, chunk, length))


def _sink_finish(
    out: torch.Tensor, qn: torch.Tensor, slots: torch.Tensor, valid_sorted: torch.Tensor, chunk: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """From the sink kernel's rows (rows, Lp, d + 1): the sink fraction ``f`` (rows, Lp), the logsumexp
    (float32; ``MASK_SELF`` for lone queries, -inf where a query sees no key) and the lone queries (the window
    holds no real key but the query itself; their output is their own value)."""
    rows = qn.shape[0]
    d = out.shape[-1] - 1
    f = out[..., d].float().clamp(max=1.0)
    lse = qn + torch.log(f) - torch.log1p(-f)
    cnt = valid_sorted.view(rows, -1, chunk).sum(dim=-1)  # (rows, nc)
    in_window = torch.where(slots >= 0, cnt.gather(1, slots.clamp(min=0).view(rows, -1)).view_as(slots), 0).sum(-1)
    lone = (in_window == 1).repeat_interleave(chunk, dim=1) & valid_sorted
    lse = torch.where(lone, torch.full_like(lse, MASK_SELF), lse)
    lse = torch.where(valid_sorted | (f > 0), lse, torch.full_like(lse, float("-inf")))
    return f, lse, lone


def _sink_columns(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The sink kernel's two extra columns on (..., d) rows: queries ``[q, 1, |q|]``, keys ``[k, bias, 0]``
    (bias ``MASK_PAD`` where ``valid`` is False) and values ``[v, valid]``; the one place that layout is built
    (`_flex_forward_sink` on sorted rows, `_kernel_layout` on unsorted rows it then gathers)."""
    qn = q.float().norm(dim=-1, keepdim=True).to(q.dtype)
    bias = torch.zeros_like(qn).masked_fill_(~valid.unsqueeze(-1), MASK_PAD)
    return (torch.cat([q, torch.ones_like(qn), qn], dim=-1), torch.cat([k, bias, torch.zeros_like(qn)], dim=-1),
            torch.cat([v, valid.unsqueeze(-1).to(v.dtype)], dim=-1))


def _flex_forward_sink(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slots: torch.Tensor, valid_sorted: torch.Tensor, chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Compiled CPU FlexAttention with the logsumexp recovered through a sink key (the CPU kernel has no
    ``return_lse`` in torch 2.13).

    Every query also sees one extra key whose logit is the query's norm ``|q|`` (an upper bound of every
    real logit: keys are unit vectors) and whose value is 0, while real values carry an extra column of ones.
    That column of the output is ``f = x / (1 + x)`` with ``x = Z exp(-|q|)`` in ``(0, n_keys]``, so
    ``lse = |q| + log f - log1p(-f)`` and the output over the real keys is ``out / f``. A query whose only
    real key is itself (logit ``MASK_SELF``) gets its own value and ``lse = MASK_SELF``, as in the masked path.
    The sink logit and the padding mask ride in two extra query / key columns (``[q, 1, |q|]`` against
    ``[k, bias, 0]``, bias ``MASK_PAD`` at padding keys, and ``[0, 0, 1]`` for the sink), so the kernel
    reads no captured tensor.

    Args: (rows, Lp, d) sorted inputs (Lp a multiple of ``chunk``), slots (rows, Lp / chunk, S),
    valid_sorted (rows, Lp). Returns ((rows, Lp, d), (rows, Lp) float32; -inf where a query sees no key).
    """
    rows, _, d = q.shape
    qq, kk, vv = _sink_columns(q, k, v, valid_sorted)
    kk = torch.cat([kk, _sink_key_block(rows, chunk, d, k)], dim=1)
    vv = torch.cat([vv, v.new_zeros(rows, chunk, d + 1)], dim=1)
    out = _sink_attention(qq, kk, vv, slots, chunk)
    f, lse, lone = _sink_finish(out, qq[..., d + 1].float(), slots, valid_sorted, chunk)
    res = out[..., :d] / f.clamp(min=torch.finfo(torch.float32).tiny).unsqueeze(-1).to(out.dtype)
    res = torch.where(lone.unsqueeze(-1), v, res)
    return res, lse


def _windowed_backward(
    q, k, v, out, lse, dout, dlse, slots, valid_sorted, chunk: int, before: int, budget: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of the windowed attention (rows, L, d) by recomputing the probabilities from ``lse``,
    a group of rows at a time (at most ``budget`` logits at once)."""
    rows, L, d = q.shape
    nc = L // chunk
    S = slots.shape[-1]
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    step = max(1, budget // max(1, L * S * chunk))
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        n = r1 - r0
        sl = slots[r0:r1]
        idx = sl.clamp(min=0)
        ridx = torch.arange(n, device=q.device).view(n, 1, 1)
        Qc = q[r0:r1].view(n, nc, chunk, d).float()
        Kw = k[r0:r1].view(n, nc, chunk, d)[ridx, idx].reshape(n, nc, S * chunk, d).float()
        Vw = v[r0:r1].view(n, nc, chunk, d)[ridx, idx].reshape(n, nc, S * chunk, d).float()
        key_bad = ~(valid_sorted[r0:r1].view(n, nc, chunk)[ridx, idx] & (sl >= 0).unsqueeze(-1)).reshape(n, nc, 1, -1)
        # probabilities, in place: the self logit (diagonal of the `before` slot; a masked slot is zeroed anyway)
        # is the constant MASK_SELF
        p = torch.matmul(Qc, Kw.transpose(-1, -2))
        self_diag = p.view(n, nc, chunk, S, chunk)[:, :, :, before].diagonal(dim1=-2, dim2=-1)
        self_diag.fill_(MASK_SELF)
        lse_c = lse[r0:r1].view(n, nc, chunk, 1)
        p.sub_(torch.where(torch.isfinite(lse_c), lse_c, torch.zeros_like(lse_c))).exp_().masked_fill_(key_bad, 0.0)
        do = dout[r0:r1].view(n, nc, chunk, d).float()
        shift = (do * out[r0:r1].view(n, nc, chunk, d).float()).sum(-1, keepdim=True)
        shift.sub_(dlse[r0:r1].view(n, nc, chunk, 1).float())
        ds = torch.matmul(do, Vw.transpose(-1, -2)).sub_(shift).mul_(p)
        ds.view(n, nc, chunk, S, chunk)[:, :, :, before].diagonal(dim1=-2, dim2=-1).fill_(0.0)  # constant logit
        dq[r0:r1] = torch.matmul(ds, Kw).view(n, L, d).to(q.dtype)
        dkw = torch.matmul(ds.transpose(-1, -2), Qc).view(n, nc, S, chunk, d)
        dvw = torch.matmul(p.transpose(-1, -2), do).view(n, nc, S, chunk, d)
        flat = (ridx * nc + idx).reshape(-1)
        dk[r0:r1] = (torch.zeros(n * nc, chunk, d, device=q.device).index_add_(0, flat, dkw.reshape(-1, chunk, d))
                     .view(n, L, d).to(k.dtype))
        dv[r0:r1] = (torch.zeros(n * nc, chunk, d, device=q.device).index_add_(0, flat, dvw.reshape(-1, chunk, d))
                     .view(n, L, d).to(v.dtype))
    return dq, dk, dv


class _FlexWindowed(torch.autograd.Function):
    """Compiled FlexAttention forward, vectorised windowed backward (FlexAttention has no CPU backward)."""

    @staticmethod
    def forward(ctx, q, k, v, slots, valid_sorted, chunk, length, before, budget):  # type: ignore[override]
        L = q.shape[1]
        pad = length - L
        qp, kp, vp = (torch.nn.functional.pad(x, (0, 0, 0, pad)) if pad else x for x in (q, k, v))
        vs = torch.nn.functional.pad(valid_sorted, (0, pad)) if pad else valid_sorted
        sp = window_slots_padded(slots, length // chunk)
        out, lse = _flex_forward_sink(qp.detach(), kp.detach(), vp.detach(), sp, vs, chunk)
        out, lse = out[:, :L].contiguous(), lse[:, :L].contiguous()
        ctx.save_for_backward(q, k, v, out, lse, slots, valid_sorted)
        ctx.chunk, ctx.before, ctx.budget = chunk, before, budget
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):  # type: ignore[override]
        q, k, v, out, lse, slots, valid_sorted = ctx.saved_tensors
        if dout is None:
            dout = torch.zeros_like(out)
        if dlse is None:
            dlse = torch.zeros_like(lse)
        dq, dk, dv = _windowed_backward(
            q, k, v, out, lse, dout, dlse, slots, valid_sorted, ctx.chunk, ctx.before, ctx.budget
        )
        return dq, dk, dv, None, None, None, None, None, None


def window_slots_padded(slots: torch.Tensor, n_chunks: int) -> torch.Tensor:
    """Slots (rows, nc, S) extended with empty slots for the padded chunks up to ``n_chunks``."""
    rows, nc, S = slots.shape
    if n_chunks == nc:
        return slots
    extra = torch.full((rows, n_chunks - nc, S), -1, dtype=slots.dtype, device=slots.device)
    return torch.cat([slots, extra], dim=1)


def _kernel_layout(
    qk: torch.Tensor, v: torch.Tensor, key_valid: torch.Tensor, p: torch.Tensor, R: int, length: int, chunk: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The sink kernel's extended inputs (see `_sink_attention`) gathered straight from the unsorted rows, one
    row gather each (no sort-then-pad-then-concatenate copies): queries (rows, length, d + 2), keys
    (rows, length + chunk, d + 2), values (rows, length + chunk, d + 1), and the sorted validity
    (rows, length). Keys are normalised and ``|q|`` computed before sorting (the same per-vector arithmetic on
    R times fewer rows)."""
    N, L, d = qk.shape
    rows = p.shape[0]
    sink, masked = N * L, N * L + 1  # the two extra source rows: `_sink_key_block`'s sink key and masked key
    src = (torch.arange(N, device=qk.device).repeat_interleave(R) * L).unsqueeze(1) + p  # (rows, L)
    index = torch.cat(
        [src, src.new_full((rows, length - L), masked), src.new_full((rows, 1), sink),
         src.new_full((rows, chunk - 1), masked)], dim=1,
    )
    flat_kv = index.reshape(-1)
    flat_q = index[:, :length].reshape(-1)
    kn = torch.nn.functional.normalize(qk, dim=-1, eps=1e-6)
    q_ext, k_ext, v_ext = _sink_columns(qk, kn, v, key_valid)
    q_src = torch.cat([q_ext.reshape(N * L, d + 2), qk.new_zeros(2, d + 2)])
    k_src = torch.cat([k_ext.reshape(N * L, d + 2), _sink_key_block(1, 2, d, qk)[0]])
    v_src = torch.cat([v_ext.reshape(N * L, d + 1), v.new_zeros(2, d + 1)])
    valid_src = torch.cat([key_valid.reshape(-1), key_valid.new_zeros(2)])
    qq = q_src.index_select(0, flat_q).view(rows, length, d + 2)
    kk = k_src.index_select(0, flat_kv).view(rows, length + chunk, d + 2)
    vv = v_src.index_select(0, flat_kv).view(rows, length + chunk, d + 1)
    return qq, kk, vv, valid_src.index_select(0, flat_q).view(rows, length)


def _flex_inference(
    qk: torch.Tensor,
    v: torch.Tensor,
    perm: torch.Tensor,
    key_valid: torch.Tensor,
    n_real_chunks: torch.Tensor,
    chunk: int,
    before: int,
    after: int,
    wrap: bool,
) -> torch.Tensor:
    """`flex_chunked_attention` without gradients on the CPU, in fewer passes over the (rows, L, d) tensors:
    inputs laid out by `_kernel_layout`, and the kernel's unnormalised rows taken back to position order and
    weighted by ``softmax_r(lse) / f`` in one gather and one multiply-add per round (the division by the sink
    fraction ``f`` and `combine_rounds` folded into one scale per query)."""
    N, L, d = qk.shape
    R = perm.shape[1]
    rows = N * R
    nc = L // chunk
    length = padded_length(L, chunk)
    p = perm.reshape(rows, L)
    inv = inverse_permutation(p)
    qq, kk, vv, valid_s = _kernel_layout(qk, v, key_valid, p, R, length, chunk)
    row_of = torch.arange(N, device=qk.device).repeat_interleave(R)
    slots = window_slots_padded(
        window_slot_chunks(nc, n_real_chunks.index_select(0, row_of), before, after, wrap), length // chunk
    )
    out = _sink_attention(qq, kk, vv, slots, chunk)  # (rows, length, d + 1)
    f, lse, lone = _sink_finish(out, qq[..., d + 1].float(), slots, valid_s, chunk)
    f, lse, lone = (x[:, :L].gather(1, inv) for x in (f, lse, lone))  # position order
    real = key_valid.index_select(0, row_of)
    weights = torch.softmax(torch.where(real, lse, torch.zeros_like(lse)).view(N, R, L), dim=1)
    f = f.view(N, R, L)
    lone = lone.view(N, R, L)
    scale = torch.where(lone, torch.zeros_like(weights), weights / f.clamp(min=torch.finfo(f.dtype).tiny))
    # rows of the kernel output in position order: row r * length + inv
    flat = (inv + (torch.arange(rows, device=qk.device) * length).unsqueeze(1)).view(N, R, L)
    out2 = out.reshape(rows * length, d + 1)
    acc_dtype = torch.promote_types(out.dtype, torch.float32)
    combined = None
    for r in range(R):
        part = out2.index_select(0, flat[:, r].reshape(-1))[:, :d].view(N, L, d).to(acc_dtype)
        term = scale[:, r].unsqueeze(-1).to(acc_dtype)
        combined = part.mul_(term) if combined is None else combined.addcmul_(part, term)
    assert combined is not None
    if bool(lone.any()):  # free on the CPU; only batches holding a one-token document
        combined = combined + (weights * lone).sum(1).unsqueeze(-1).to(acc_dtype) * v.to(acc_dtype)
    return combined.to(qk.dtype)


def flex_chunked_attention(
    qk: torch.Tensor,
    v: torch.Tensor,
    perm: torch.Tensor,
    key_valid: torch.Tensor,
    n_real_chunks: torch.Tensor,
    chunk: int,
    before: int,
    after: int,
    wrap: bool,
    budget: int = 1 << 24,
    kernel_lse: bool = True,
) -> torch.Tensor:
    """`chunked_attention_combined` on FlexAttention (no attention dropout).

    Args:
        qk: (N, L, d) shared query-keys, v: (N, L, d) values (N = batch * heads).
        perm: (N, R, L) the sorted order of each round (real tokens first when ``wrap``).
        key_valid: (N, L) bool, False at padding.
        n_real_chunks: (N,) real chunks per row.
        chunk: Chunk length (the block size); L must be a multiple of it.
        budget: Largest number of logits the CPU backward computes at once.
        kernel_lse: On CPU, False runs the CUDA formulation (FlexAttention's ``return_lse``) eagerly instead
            of the compiled sink kernel: dense scores, forward only (torch 2.13 has no CPU backward); tests.

    Returns:
        (N, L, d) outputs in original order, rounds combined (zero at padding queries with no key).
    """
    N, L, d = qk.shape
    R = perm.shape[1]
    nc = L // chunk
    grad = torch.is_grad_enabled() and (qk.requires_grad or v.requires_grad)
    if qk.device.type == "cpu" and kernel_lse and not grad:
        return _flex_inference(qk, v, perm, key_valid, n_real_chunks, chunk, before, after, wrap)
    rows = torch.arange(N, device=qk.device).repeat_interleave(R)
    p = perm.reshape(N * R, L)
    inv = inverse_permutation(p)
    identity = not wrap and R == 1
    if identity:  # local attention: position order, nothing to sort
        qs, vs = qk, v
        valid_s = key_valid
    else:
        qs = _SortRows.apply(qk, rows, p, inv)
        vs = _SortRows.apply(v, rows, p, inv)
        valid_s = key_valid.index_select(0, rows).gather(1, p)
    ks = torch.nn.functional.normalize(qs, dim=-1, eps=1e-6)
    slots = window_slot_chunks(nc, n_real_chunks.index_select(0, rows), before, after, wrap)
    length = padded_length(L, chunk)
    dtype = qs.dtype
    if qk.device.type != "cpu" or not kernel_lse:
        # FlexAttention's own logsumexp and backward (CUDA); ``kernel_lse=False`` on CPU runs it eagerly
        # (dense scores: small inputs only, for tests)
        from torch.nn.functional import pad

        extra = length - L
        qp, kp, vp = (pad(x, (0, 0, 0, extra)) if extra else x for x in (qs, ks, vs))
        vsp = pad(valid_s, (0, extra)) if extra else valid_s
        bm = _block_mask(window_slots_padded(slots, length // chunk), vsp, chunk, length, backward=True)
        out, lse = _flex_forward(qp, kp, vp, bm, compiled=qk.device.type != "cpu")
        out, lse = out[:, :L], lse[:, :L]
    else:
        out, lse = _FlexWindowed.apply(qs, ks, vs, slots, valid_s, chunk, length, before, budget)
    lse = lse.float()
    if not identity:
        out = PermuteRows.apply(out, inv, p)
        lse = lse.gather(1, inv)
    real = key_valid.index_select(0, rows)
    lse = torch.where(real, lse, torch.zeros_like(lse))
    out = out.to(dtype)
    return combine_rounds(out.view(N, R, L, d), lse.view(N, R, L))
