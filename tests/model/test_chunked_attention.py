"""The functional core of LSH attention against brute-force references (anchors sec. 5, tests 1, 2, 8, 10-12).

Every reference here is rebuilt with plain Python loops from the buckets (or windows) alone, in float64, so
the sort / chunk / look-around / mask / round-combination machinery is checked end to end.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from reformer_retrieval.model import chunked_attention as chunked_attention_module
from reformer_retrieval.model.chunked_attention import (
    MASK_SELF,
    PermuteRows,
    chunked_attention,
    combine_rounds,
    full_attention,
    inverse_permutation,
    look_around,
    window_slot_chunks,
)
from reformer_retrieval.model.lsh_attention import PAD_BUCKET, hash_buckets, sort_by_buckets

D64 = torch.float64


def _valid_mask(L: int, n_real: list[int]) -> torch.Tensor:
    valid = torch.zeros(len(n_real), L, dtype=torch.bool)
    for row, n in enumerate(n_real):
        valid[row, :n] = True
    return valid


def _n_real_chunks(valid: torch.Tensor, chunk: int) -> torch.Tensor:
    return ((valid.sum(dim=1) + chunk - 1) // chunk).clamp(min=1)


def _random_buckets(valid: torch.Tensor, H: int, R: int, n_buckets: int, seed: int) -> torch.Tensor:
    """(B, H, R, L) random bucket ids with padding in ``PAD_BUCKET``."""
    gen = torch.Generator().manual_seed(seed)
    B, L = valid.shape
    buckets = torch.randint(0, n_buckets, (B, H, R, L), generator=gen)
    return torch.where(valid[:, None, None, :], buckets, torch.full_like(buckets, PAD_BUCKET))


def _python_sort(buckets: torch.Tensor) -> torch.Tensor:
    """Sorted order of every (…, L) row by ``(bucket, position)`` with Python's sort."""
    flat = buckets.reshape(-1, buckets.shape[-1]).tolist()
    orders = [sorted(range(len(row)), key=lambda p, row=row: (row[p], p)) for row in flat]
    return torch.tensor(orders, dtype=torch.long).view(buckets.shape)


def _run_chunked(qk, v, buckets, valid, chunk, before=1, after=1, budget=1 << 24, perm=None):
    """chunked_attention + combine_rounds on (B, H, L, d) inputs; returns (out (B,H,L,d), lse (B,H,R,L))."""
    B, H, L, d = qk.shape
    R = buckets.shape[2]
    perm = _python_sort(buckets) if perm is None else perm
    out, lse = chunked_attention(
        qk.reshape(B * H, L, d),
        v.reshape(B * H, L, d),
        perm.reshape(B * H, R, L),
        valid.repeat_interleave(H, dim=0),
        _n_real_chunks(valid, chunk).repeat_interleave(H, dim=0),
        chunk,
        before,
        after,
        wrap=True,
        budget=budget,
    )
    return combine_rounds(out, lse).view(B, H, L, d), lse.view(B, H, R, L)


# ---------------------------------------------------------------------------------------------- windows


def test_inverse_permutation_inverts():
    perm = torch.stack([torch.randperm(10, generator=torch.Generator().manual_seed(s)) for s in range(3)])
    inv = inverse_permutation(perm)
    assert torch.equal(perm.gather(1, inv), torch.arange(10).expand(3, 10))
    assert torch.equal(inv.gather(1, perm), torch.arange(10).expand(3, 10))


def test_window_slots_wrap_inside_real_chunks_without_duplicates():
    # 6 chunks; documents with 6, 4, 2 and 1 real chunks. Slot order: [previous, self, next].
    slots = window_slot_chunks(6, torch.tensor([6, 4, 2, 1]), 1, 1, wrap=True)
    assert slots.shape == (4, 6, 3)
    assert slots[0, 0].tolist() == [5, 0, 1]
    assert slots[0, 5].tolist() == [4, 5, 0]
    assert slots[1, 0].tolist() == [3, 0, 1]  # the first chunk wraps to the last *real* chunk
    assert slots[1, 3].tolist() == [2, 3, 0]  # the last real chunk wraps to the first
    assert slots[2, 0].tolist() == [1, 0, -1]  # two real chunks: the other one appears once
    assert slots[2, 1].tolist() == [0, 1, -1]
    assert slots[3, 0].tolist() == [-1, 0, -1]  # one real chunk: only itself
    assert slots[1, 4].tolist() == [-1, -1, -1]  # a chunk of padding only claims no slot
    for row in slots.tolist():
        for window in row:
            seen = [c for c in window if c >= 0]
            assert len(seen) == len(set(seen))
    plain = window_slot_chunks(6, torch.tensor([4]), 1, 1, wrap=False)
    assert plain[0, 0].tolist() == [-1, 0, 1]
    assert plain[0, 3].tolist() == [2, 3, -1]  # no wrap: the last real chunk does not see the first


def test_look_around_fills_the_slots_it_claims():
    n, nc, c = 3, 5, 2
    x = torch.arange(n * nc * c, dtype=torch.float32).view(n, nc, c)
    n_real = torch.tensor([5, 3, 1])
    for wrap in (True, False):
        for before, after in ((1, 1), (1, 0), (0, 1)):
            got = look_around(x, n_real, before, after, wrap).reshape(n, nc, 1 + before + after, c)
            slots = window_slot_chunks(nc, n_real, before, after, wrap)
            for row in range(n):
                for ci in range(nc):
                    for s in range(slots.shape[-1]):
                        src = int(slots[row, ci, s])
                        if src >= 0:
                            assert torch.equal(got[row, ci, s], x[row, src])


# ---------------------------------------------------------------------------------------------- test 2


@pytest.mark.parametrize(("before", "after"), [(1, 1), (1, 0), (0, 1), (0, 0)])
@pytest.mark.parametrize("budget", [1 << 24, 1])
def test_chunked_attention_equals_bruteforce_reference_from_buckets(lsh_reference, before, after, budget):
    """Anchors test 2: rebuild each window from the buckets in Python; float64, tolerance 1e-10."""
    B, H, R, L, d, chunk = 4, 2, 3, 48, 5, 4
    valid = _valid_mask(L, [48, 29, 6, 1])  # 12, 8, 2 and 1 real chunks of 12
    gen = torch.Generator().manual_seed(1)
    qk = torch.randn(B, H, L, d, generator=gen, dtype=D64)
    v = torch.randn(B, H, L, d, generator=gen, dtype=D64)
    buckets = _random_buckets(valid, H, R, n_buckets=6, seed=2)
    out, lse = _run_chunked(qk, v, buckets, valid, chunk, before, after, budget)
    ref_out, ref_lse = lsh_reference(qk, v, buckets, valid, chunk, before, after)
    real = valid[:, None, :].expand(B, H, L)
    assert torch.isfinite(out).all()
    assert (out - ref_out)[real].abs().max().item() < 1e-10
    real_r = valid[:, None, None, :].expand(B, H, R, L)
    assert (lse - ref_lse)[real_r].abs().max().item() < 1e-10


def test_sort_by_buckets_matches_python_sort_and_puts_padding_last():
    valid = _valid_mask(40, [40, 17])
    buckets = _random_buckets(valid, 2, 3, n_buckets=8, seed=3)
    perm = sort_by_buckets(buckets)
    assert torch.equal(perm, _python_sort(buckets))
    # the first n_real sorted slots of every round hold exactly the real tokens
    first = perm[1, :, :, :17]
    assert bool((first < 17).all())


def test_full_attention_equals_bruteforce_reference(lsh_reference):
    """One bucket, one window: the brute-force LSH reference is plain shared-QK attention."""
    B, H, L, d = 3, 2, 12, 4
    valid = _valid_mask(L, [12, 7, 1])
    gen = torch.Generator().manual_seed(4)
    qk = torch.randn(B, H, L, d, generator=gen, dtype=D64)
    v = torch.randn(B, H, L, d, generator=gen, dtype=D64)
    buckets = torch.where(valid, 0, PAD_BUCKET)[:, None, None, :].expand(B, H, 1, L)
    ref, _ = lsh_reference(qk, v, buckets, valid, chunk=L)
    out = full_attention(qk, v, valid)
    real = valid[:, None, :].expand(B, H, L)
    assert (out - ref)[real].abs().max().item() < 1e-12


# ---------------------------------------------------------------------------------------------- test 1


@pytest.mark.parametrize("rounds", [1, 4])
def test_exact_fallback_when_the_window_covers_every_chunk(rounds):
    """Anchors test 1: with at most 1 + before + after real chunks, chunked LSH == full attention."""
    B, H, L, d, chunk = 3, 2, 24, 4, 8  # 3 chunks of 8
    valid = _valid_mask(L, [24, 13, 3])
    gen = torch.Generator().manual_seed(5)
    qk = torch.randn(B, H, L, d, generator=gen, dtype=D64)
    v = torch.randn(B, H, L, d, generator=gen, dtype=D64)
    buckets = _random_buckets(valid, H, rounds, n_buckets=4, seed=6)
    out, _ = _run_chunked(qk, v, buckets, valid, chunk)
    full = full_attention(qk, v, valid)
    real = valid[:, None, :].expand(B, H, L)
    assert (out - full)[real].abs().max().item() < 1e-12


def test_exact_fallback_for_short_documents_in_a_long_batch():
    """Documents of <= 3 real chunks padded to many chunks: every round sees every real key."""
    B, H, L, d, chunk = 3, 1, 64, 4, 8  # 8 chunks, documents of 3, 2 and 1 real chunks
    valid = _valid_mask(L, [24, 9, 5])
    gen = torch.Generator().manual_seed(7)
    qk = torch.randn(B, H, L, d, generator=gen, dtype=D64)
    v = torch.randn(B, H, L, d, generator=gen, dtype=D64)
    buckets = _random_buckets(valid, H, 3, n_buckets=6, seed=8)
    out, _ = _run_chunked(qk, v, buckets, valid, chunk)
    for b, n in enumerate([24, 9, 5]):
        alone = full_attention(qk[b : b + 1, :, :n], v[b : b + 1, :, :n], valid[b : b + 1, :n])
        assert (out[b, :, :n] - alone[0]).abs().max().item() < 1e-12


# ---------------------------------------------------------------------------------------------- test 8


def test_gradcheck_chunked_attention_float64():
    """Anchors test 8: gradcheck through sort, chunk, look-around, masks, un-sort and round combination."""
    N, L, d, chunk, R = 2, 8, 2, 2, 2  # 4 chunks: the wrap and the neighbour slots are exercised
    valid = _valid_mask(L, [8, 5])
    buckets = _random_buckets(valid, 1, R, n_buckets=4, seed=9)[:, 0]  # (N, R, L)
    perm = sort_by_buckets(buckets)
    nrc = _n_real_chunks(valid, chunk)
    gen = torch.Generator().manual_seed(10)
    qk = torch.randn(N, L, d, generator=gen, dtype=D64, requires_grad=True)
    v = torch.randn(N, L, d, generator=gen, dtype=D64, requires_grad=True)
    real = valid.unsqueeze(-1).to(D64)

    def fn(qk_, v_):
        out, lse = chunked_attention(qk_, v_, perm, valid, nrc, chunk, 1, 1, wrap=True)
        return combine_rounds(out, lse) * real

    assert torch.autograd.gradcheck(fn, (qk, v), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("before", [1, 0])
def test_fused_training_path_equals_the_masked_path_in_values_and_gradients(monkeypatch, lsh_reference, before):
    """With gradients on the CPU the fused kernel runs forward and backward (`_FusedWindowsFn`; the round
    weights' logsumexp gradient through its extra value column); windows with masked keys are redone by the
    masked path. Values and gradients equal the float64 brute-force reference and the masked path."""
    N, L, d, chunk, R = 3, 64, 8, 8, 3
    valid = _valid_mask(L, [64, 37, 1])
    buckets = _random_buckets(valid, 1, R, n_buckets=6, seed=21)[:, 0]
    perm = sort_by_buckets(buckets)
    nrc = _n_real_chunks(valid, chunk)
    gen = torch.Generator().manual_seed(22)
    qk = torch.randn(N, L, d, generator=gen, dtype=D64) * 2
    v = torch.randn(N, L, d, generator=gen, dtype=D64)
    weight = torch.randn(N, L, d, generator=gen, dtype=D64) * valid.unsqueeze(-1)
    calls = []
    real_apply = chunked_attention_module._FusedWindowsFn.apply
    monkeypatch.setattr(chunked_attention_module._FusedWindowsFn, "apply",
                        lambda *a: calls.append(1) or real_apply(*a))

    def grads(fused: bool):
        monkeypatch.setattr(chunked_attention_module, "_fused_train_ok", lambda *a: fused)
        q_, v_ = qk.float().requires_grad_(), v.float().requires_grad_()
        out = combine_rounds(*chunked_attention(q_, v_, perm, valid, nrc, chunk, before, 1, wrap=True))
        (out.double() * weight).sum().backward()
        return out.detach(), q_.grad, v_.grad

    fused, masked = grads(True), grads(False)
    assert calls  # the fused path ran
    ref_q, ref_v = qk.clone().requires_grad_(), v.clone().requires_grad_()
    ref, _ = lsh_reference(ref_q[:, None], ref_v[:, None], buckets[:, None], valid, chunk, before, 1)
    (ref[:, 0] * weight).sum().backward()
    real = valid.unsqueeze(-1)
    assert ((fused[0].double() - ref[:, 0]) * real).abs().max().item() < 2e-5
    for got, want in zip(fused, masked):
        assert torch.allclose(got, want, atol=2e-5, rtol=1e-4)
    assert (fused[1].double() - ref_q.grad).abs().max().item() < 1e-4
    assert (fused[2].double() - ref_v.grad).abs().max().item() < 1e-4


def test_gradcheck_full_attention_float64():
    valid = _valid_mask(6, [6, 4])
    gen = torch.Generator().manual_seed(11)
    qk = torch.randn(2, 1, 6, 3, generator=gen, dtype=D64, requires_grad=True)
    v = torch.randn(2, 1, 6, 3, generator=gen, dtype=D64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: full_attention(a, b, valid), (qk, v), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("shape", [(3, 7), (3, 7, 4)])
def test_gradcheck_permute_rows(shape):
    gen = torch.Generator().manual_seed(12)
    x = torch.randn(*shape, generator=gen, dtype=D64, requires_grad=True)
    perm = torch.stack([torch.randperm(shape[1], generator=gen) for _ in range(shape[0])])
    inv = inverse_permutation(perm)
    out = PermuteRows.apply(x, perm, inv)
    expected = torch.stack([x[i, perm[i]] for i in range(shape[0])])
    assert torch.equal(out, expected)
    assert torch.autograd.gradcheck(lambda t: PermuteRows.apply(t, perm, inv), (x,))


# ---------------------------------------------------------------------------------------------- test 10


@pytest.mark.parametrize("rounds", [1, 3])
def test_self_mask_lone_token_returns_its_own_value(rounds):
    """Anchors test 10: a real token with no other real key returns its own value (wrap path, padded)."""
    B, H, L, d, chunk = 1, 1, 64, 4, 16  # 4 chunks; one real token -> one real chunk, empty neighbour slots
    valid = _valid_mask(L, [1])
    gen = torch.Generator().manual_seed(13)
    qk = torch.randn(B, H, L, d, generator=gen)
    v = torch.randn(B, H, L, d, generator=gen)
    buckets = _random_buckets(valid, H, rounds, n_buckets=2, seed=14)
    out, lse = _run_chunked(qk, v, buckets, valid, chunk)
    assert torch.equal(out[0, 0, 0], v[0, 0, 0])
    assert torch.equal(lse[0, 0, :, 0], torch.full((rounds,), MASK_SELF))
    assert torch.equal(full_attention(qk[:, :, :1], v[:, :, :1], valid[:, :1])[0, 0, 0], v[0, 0, 0])
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()


def test_self_weight_is_zero_when_other_keys_exist(lsh_reference):
    """Shared QK makes q.q the largest logit; the self mask must remove it (reference excludes self)."""
    B, H, L, d, chunk = 1, 1, 32, 4, 4
    valid = _valid_mask(L, [32])
    gen = torch.Generator().manual_seed(15)
    qk = 6.0 * torch.randn(B, H, L, d, generator=gen, dtype=D64)  # large norms: self would dominate
    v = torch.randn(B, H, L, d, generator=gen, dtype=D64)
    buckets = _random_buckets(valid, H, 2, n_buckets=4, seed=16)
    out, _ = _run_chunked(qk, v, buckets, valid, chunk)
    ref, _ = lsh_reference(qk, v, buckets, valid, chunk)
    assert (out - ref).abs().max().item() < 1e-10
    # the test can tell: attending self would pull every output towards its own value
    assert (out - v).abs().amax(dim=-1).min().item() > 1e-3
    full = full_attention(qk, v, valid)
    k = qk / qk.norm(dim=-1, keepdim=True)
    logits = qk @ k.transpose(-1, -2)
    with_self = torch.softmax(logits, dim=-1) @ v
    no_self = torch.softmax(logits.masked_fill(torch.eye(L, dtype=torch.bool), float("-inf")), dim=-1) @ v
    assert (full - no_self).abs().max().item() < 1e-10
    assert (with_self - no_self).abs().max().item() > 0.1


def test_padding_slot_copies_are_never_counted_twice():
    """Empty window slots hold copies of chunks (the query's own, with one or two real chunks); the
    logsumexp must be over distinct keys, exactly as for the same document without padding."""
    H, d, chunk = 1, 4, 4
    gen = torch.Generator().manual_seed(17)
    for n_real in (3, 4, 6, 8):  # one or two real chunks
        qk = torch.randn(1, H, 32, d, generator=gen, dtype=D64)
        v = torch.randn(1, H, 32, d, generator=gen, dtype=D64)
        valid = _valid_mask(32, [n_real])
        buckets = _random_buckets(valid, H, 2, n_buckets=2, seed=n_real)
        out, lse = _run_chunked(qk, v, buckets, valid, chunk)
        k = qk[0, 0, :n_real] / qk[0, 0, :n_real].norm(dim=-1, keepdim=True)
        logits = (qk[0, 0, :n_real] @ k.T).masked_fill(torch.eye(n_real, dtype=torch.bool), float("-inf"))
        expected_lse = torch.logsumexp(logits, dim=-1)
        for r in range(2):
            assert (lse[0, 0, r, :n_real] - expected_lse).abs().max().item() < 1e-10
        assert (out[0, 0, :n_real] - full_attention(qk[:, :, :n_real], v[:, :, :n_real], valid[:, :n_real])[0, 0]).abs().max() < 1e-10


# ---------------------------------------------------------------------------------------------- test 11


def test_full_attention_is_permutation_equivariant():
    """Anchors test 11 (exact regime): no positions, so permuting tokens permutes the outputs."""
    gen = torch.Generator().manual_seed(18)
    L = 20
    qk = torch.randn(2, 2, L, 4, generator=gen, dtype=D64)
    v = torch.randn(2, 2, L, 4, generator=gen, dtype=D64)
    valid = _valid_mask(L, [20, 11])
    pi = torch.randperm(L, generator=gen)
    out = full_attention(qk, v, valid)
    out_p = full_attention(qk[:, :, pi], v[:, :, pi], valid[:, pi])
    assert (out_p - out[:, :, pi]).abs().max().item() < 1e-12


# ---------------------------------------------------------------------------------------------- test 12


def _hash_errors(seed: int, rounds: tuple[int, ...]) -> list[float]:
    """Mean |LSH - exact| for each number of hash rounds, on clustered vectors (16 chunks, 32 buckets)."""
    L, d, chunk = 256, 16, 16
    gen = torch.Generator().manual_seed(seed)
    centers = 4.0 * torch.randn(16, d, generator=gen)
    qk = (centers[torch.randint(0, 16, (L,), generator=gen)] + torch.randn(L, d, generator=gen))[None, None]
    v = torch.randn(1, 1, L, d, generator=gen)
    valid = torch.ones(1, L, dtype=torch.bool)
    rotations = torch.randn(1, max(rounds), d, 16, generator=gen)
    full = full_attention(qk, v, valid)
    errors = []
    for R in rounds:
        buckets = hash_buckets(qk, rotations, R, valid, [(32,)])
        out, _ = _run_chunked(qk, v, buckets, valid, chunk, perm=sort_by_buckets(buckets))
        errors.append((out - full).abs().mean().item())
    return errors


def test_approximation_error_falls_as_hash_rounds_grow():
    """Anchors test 12: mean error to exact attention decreases with n_hashes (averaged over 3 draws)."""
    rounds = (1, 2, 4, 8)
    per_seed = [_hash_errors(seed, rounds) for seed in range(3)]
    errors = [sum(col) / len(col) for col in zip(*per_seed)]
    assert all(a > b for a, b in itertools.pairwise(errors)), errors
    assert errors[-1] < 0.5 * errors[0], errors
