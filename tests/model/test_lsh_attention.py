"""The LSH attention module: hashing, bucket counts, fixed rotations, the exact short-input path, and the
whole module against a brute-force reference built from its own buckets (anchors sec. 5, tests 1, 2, 8, 11-13).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from reformer_retrieval import ReformerConfig
from reformer_retrieval.model import lsh_attention
from reformer_retrieval.model.chunked_attention import full_attention
from reformer_retrieval.model.lsh_attention import (
    PAD_BUCKET,
    LSHSelfAttention,
    SequenceInfo,
    bucket_factor_tensor,
    bucket_factors,
    max_bucket_width,
    rotation_width,
    sort_by_buckets,
)

D64 = torch.float64


def _config(**kw) -> ReformerConfig:
    base = dict(
        d_model=8, n_layers=1, n_heads=2, d_ff=16, embedding_dim=4, chunk_size=4, max_len=512,
        axial_pos_shape=(16, 32), n_hashes=3,
    )
    base.update(kw)
    return ReformerConfig(**base)


def _info(lengths: list[int], L: int) -> SequenceInfo:
    mask = torch.zeros(len(lengths), L, dtype=torch.bool)
    for row, n in enumerate(lengths):
        mask[row, :n] = True
    return SequenceInfo.from_mask(mask)


def _qk_v(attn: LSHSelfAttention, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The module's own shared query-keys and values, (B, H, L, d)."""
    B, L, _ = x.shape
    h = attn.norm(x)
    qk = attn.query_key(h).view(B, L, attn.n_heads, attn.head_dim).transpose(1, 2)
    v = attn.value(h).view(B, L, attn.n_heads, attn.head_dim).transpose(1, 2)
    return qk, v


def _merge_heads(attn: LSHSelfAttention, out: torch.Tensor) -> torch.Tensor:
    B, H, L, d = out.shape
    return attn.dense(out.transpose(1, 2).reshape(B, L, H * d))


# ---------------------------------------------------------------------------------------------- hashing


def test_buckets_equal_an_independent_angular_lsh():
    """bucket = argmax([xR; -xR]) per factor, bucket = a1 + b1 * a2; padding in PAD_BUCKET."""
    cfg = _config(max_len=4096, axial_pos_shape=(64, 64), bucket_factorise_above=8)
    attn = LSHSelfAttention(cfg, 0).eval()
    lengths = [64, 40, 7]  # 16, 10 and 2 real chunks -> (4, 8), 16 -> (4, 4), 4 -> (4,)
    L = 64
    info = _info(lengths, L)
    qk = torch.randn(3, cfg.n_heads, L, cfg.head_dim, generator=torch.Generator().manual_seed(0))
    buckets = attn.compute_buckets(qk, info)
    assert buckets.shape == (3, cfg.n_heads, cfg.eval_hashes, L)
    rot = attn.rotations.double().numpy()
    for b, n in enumerate(lengths):
        factors = bucket_factors(-(-n // cfg.chunk_size), None, 8)
        for h in range(cfg.n_heads):
            x = qk[b, h].double().numpy()
            for r in range(cfg.eval_hashes):
                expected = np.zeros(L, dtype=np.int64)
                offset, scale = 0, 1
                for f in factors:
                    proj = x @ rot[h, r, :, offset : offset + f // 2]
                    expected += scale * np.argmax(np.concatenate([proj, -proj], axis=1), axis=1)
                    offset += f // 2
                    scale *= f
                got = buckets[b, h, r].numpy()
                assert (got[:n] == expected[:n]).all()
                assert (got[n:] == PAD_BUCKET).all()
                assert got[:n].max() < int(np.prod(factors))


def _grouped_loop_buckets(qk, rotations, n_rounds, key_valid, factors):
    """The hashing as it was before it was vectorised: documents grouped by bucket count, one GEMM per head."""
    B, H, L, _ = qk.shape
    out = torch.full((B, H, n_rounds, L), PAD_BUCKET, dtype=torch.long)
    for f in set(factors):
        idx = torch.tensor([b for b, g in enumerate(factors) if g == f])
        width = sum(x // 2 for x in f)
        rot = rotations[:, :n_rounds, :, :width].permute(0, 2, 1, 3).reshape(H, -1, n_rounds * width)
        for h in range(H):
            rotated = torch.matmul(qk[idx, h], rot[h]).view(len(idx), L, n_rounds, width)
            bucket, offset, scale = 0, 0, 1
            for n_b in f:
                part = rotated[..., offset : offset + n_b // 2]
                top, top_i = part.max(dim=-1)
                low, low_i = part.min(dim=-1)
                bucket = bucket + scale * torch.where(top >= -low, top_i, low_i + n_b // 2)
                offset, scale = offset + n_b // 2, scale * n_b
            out[idx, h] = bucket.transpose(1, 2).masked_fill(~key_valid[idx, None, :], PAD_BUCKET)
    return out


@pytest.mark.parametrize("host_reads", [True, False])
@pytest.mark.parametrize(
    ("lengths", "factorise_above"),
    [([1024], 8), ([1024, 1024], 128), ([64, 40, 7], 8), ([256, 20, 4, 1], 128), ([1000, 300, 17, 700], 8)],
)
def test_vectorised_hashing_equals_the_grouped_per_head_loop(monkeypatch, lengths, factorise_above, host_reads):
    """Bit-identical buckets: one batched product for all heads and documents (masked per-document columns, or
    plain slices when the CPU sees one shared count) against the old grouped loop, mixed counts included."""
    if not host_reads:
        monkeypatch.setattr(lsh_attention, "HOST_READ_DEVICES", ())
    cfg = _config(n_heads=3, d_model=48, max_len=1024, axial_pos_shape=(32, 32), bucket_factorise_above=factorise_above)
    attn = LSHSelfAttention(cfg, 0).eval()
    L = max(lengths)
    info = _info(lengths, L)
    qk = torch.randn(len(lengths), cfg.n_heads, L, cfg.head_dim, generator=torch.Generator().manual_seed(11))
    chunks = [max(1, -(-n // cfg.chunk_size)) for n in lengths]
    factors = [bucket_factors(n, None, factorise_above) for n in chunks]
    expected = _grouped_loop_buckets(qk, attn.rotations, cfg.eval_hashes, info.key_valid, factors)
    assert torch.equal(attn.compute_buckets(qk, info), expected)
    assert torch.equal(
        bucket_factor_tensor(torch.tensor(chunks), None, factorise_above),
        torch.tensor([[f[0], f[1] if len(f) > 1 else 1] for f in factors]),
    )


def test_bucket_factor_tensor_equals_bucket_factors():
    n = torch.arange(0, 70_000)
    for fixed, above in ((None, 128), (None, 8), (32, 128), ((4, 8), 128)):
        got = bucket_factor_tensor(n, fixed, above).tolist()
        want = [bucket_factors(max(1, int(m)), fixed, above) for m in n]
        assert got == [[f[0], f[1] if len(f) > 1 else 1] for f in want]
        assert max_bucket_width(1024, fixed, above) == max(sum(x // 2 for x in f) for f in want[:1025])


class _HostReads(TorchDispatchMode):
    """Records every op that reads a tensor's values on the host (a device synchronisation off the CPU)."""

    READS = ("aten._local_scalar_dense", "aten.nonzero", "aten.masked_select", "aten._unique", "aten.unique")

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func).startswith(self.READS):
            self.reads.append(str(func))
        return func(*args, **(kwargs or {}))


def test_hashing_reads_nothing_back_to_the_host(monkeypatch):
    """The issue's requirement: bucket counts, hashing and sorting of a mixed batch run without one host read
    (``.tolist()``, ``.item()``, ``bool(tensor)``, ``nonzero``) off the CPU; the CPU shortcut is turned off so
    the device path runs here."""
    monkeypatch.setattr(lsh_attention, "HOST_READ_DEVICES", ())

    def refuse(self, *args, **kwargs):
        raise AssertionError("tensor read on the host")

    monkeypatch.setattr(torch.Tensor, "tolist", refuse)
    monkeypatch.setattr(torch.Tensor, "numpy", refuse)
    cfg = _config(bucket_factorise_above=8)
    attn = LSHSelfAttention(cfg, 0).eval()
    info = _info([512, 100, 3], 512)
    qk = torch.randn(3, cfg.n_heads, 512, cfg.head_dim, generator=torch.Generator().manual_seed(12))
    with _HostReads() as guard:
        perm = sort_by_buckets(attn.compute_buckets(qk, info))
    assert guard.reads == []
    assert perm.shape == (3, cfg.n_heads, cfg.eval_hashes, 512)


def test_rotations_are_fixed_buffers_independent_of_the_global_rng():
    cfg = _config()
    torch.manual_seed(1)
    a = LSHSelfAttention(cfg, 0)
    torch.manual_seed(2)
    b = LSHSelfAttention(cfg, 0)
    assert torch.equal(a.rotations, b.rotations)
    assert not torch.equal(a.rotations, LSHSelfAttention(cfg, 1).rotations)  # per layer
    assert not torch.equal(a.rotations, LSHSelfAttention(cfg.replace(hash_seed=7), 0).rotations)
    assert "rotations" in a.state_dict()  # saved with the model
    assert "rotations" not in dict(a.named_parameters())  # never trained
    assert a.rotations.shape == (cfg.n_heads, cfg.max_hashes, cfg.head_dim, rotation_width(cfg))


def test_hashing_is_deterministic_and_leaves_the_global_rng_alone():
    cfg = _config()
    attn = LSHSelfAttention(cfg, 0).eval()
    info = _info([64, 30], 64)
    x = torch.randn(2, 64, cfg.d_model, generator=torch.Generator().manual_seed(3))
    state = torch.get_rng_state()
    with torch.no_grad():
        out1, b1 = attn(x, info)
        out2, b2 = attn(x, info)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(b1, b2)
    assert torch.equal(out1, out2)


# ---------------------------------------------------------------------------------------------- test 13


def test_bucket_counts_are_even_powers_of_two_near_two_per_chunk():
    """Anchors test 13: even factors, product a power of two in (n_chunks, 2 n_chunks], factorised above 128."""
    for n in range(1, 5000):
        factors = bucket_factors(n)
        product = int(np.prod(factors))
        assert all(f >= 2 and f % 2 == 0 for f in factors)
        assert product & (product - 1) == 0
        assert n < product <= 2 * n or (n == 1 and product == 2)
        assert (len(factors) == 2) == (product > 128)
        if len(factors) == 2:
            assert factors[0] <= factors[1] <= 2 * factors[0]
    assert bucket_factors(64 * 1024 // 64) == (32, 64)  # 64K tokens, chunk 64: as in Hugging Face
    assert bucket_factors(64 * 1024 // 16) == (64, 128)
    assert bucket_factors(10, fixed=(4, 8)) == (4, 8)
    assert bucket_factors(1000, fixed=6) == (6,)


def test_rotation_width_covers_every_length():
    for cfg in (_config(), ReformerConfig(), _config(chunk_size=2, max_len=4096, axial_pos_shape=(64, 64))):
        width = rotation_width(cfg)
        for n in range(1, cfg.max_len // cfg.chunk_size + 1):
            assert sum(f // 2 for f in bucket_factors(n, cfg.num_buckets, cfg.bucket_factorise_above)) <= width


def test_bucket_counts_follow_each_call_and_are_never_frozen():
    cfg = _config(n_heads=1, d_model=8)
    before = cfg.to_json()
    attn = LSHSelfAttention(cfg, 0).eval()
    gen = torch.Generator().manual_seed(4)

    def max_bucket(L: int) -> int:
        qk = torch.randn(1, 1, L, cfg.head_dim, generator=gen)
        return int(attn.compute_buckets(qk, _info([L], L)).max())

    short = max_bucket(16)  # 4 chunks -> 8 buckets
    long = max_bucket(256)  # 64 chunks -> 128 buckets
    assert short < 8 <= long < 128
    assert max_bucket(16) < 8  # a later short call is not stuck with the long count either
    assert 128 <= max_bucket(512) < 256  # 128 chunks -> factorised (16, 16)
    assert cfg.to_json() == before


def test_bucket_counts_are_per_document_in_a_batch():
    cfg = _config(n_heads=1)
    attn = LSHSelfAttention(cfg, 0).eval()
    info = _info([256, 20, 4], 256)  # 64, 5 and 1 real chunks -> 128, 8 and 2 buckets
    qk = torch.randn(3, 1, 256, cfg.head_dim, generator=torch.Generator().manual_seed(5))
    buckets = attn.compute_buckets(qk, info)
    assert int(buckets[0].max()) >= 8
    assert int(buckets[1, :, :, :20].max()) < 8
    assert int(buckets[2, :, :, :4].max()) < 2
    alone = attn.compute_buckets(qk[1:2, :, :20], _info([20], 20))
    assert torch.equal(alone, buckets[1:2, :, :, :20])  # same buckets alone and in the batch


def test_fixed_num_buckets_is_honoured():
    cfg = _config(n_heads=1, num_buckets=(4, 8))
    attn = LSHSelfAttention(cfg, 0).eval()
    qk = torch.randn(1, 1, 128, cfg.head_dim, generator=torch.Generator().manual_seed(6))
    buckets = attn.compute_buckets(qk, _info([128], 128))
    assert int(buckets.max()) < 32 and len(torch.unique(buckets)) > 8


def test_bucket_factorisation_at_64k_tokens():
    """A 64K-token document with chunk 64 is hashed into 32 x 64 = 2048 factorised buckets."""
    cfg = ReformerConfig(d_model=64, n_layers=1, n_heads=1, d_ff=8, embedding_dim=4, n_hashes=1)
    assert cfg.max_len == 65536 and cfg.chunk_size == 64
    attn = LSHSelfAttention(cfg, 0).eval()
    L = 65536
    qk = torch.randn(1, 1, L, cfg.head_dim, generator=torch.Generator().manual_seed(7))
    buckets = attn.compute_buckets(qk, _info([L], L))[0, 0, 0]
    assert int(buckets.max()) < 2048
    assert len(torch.unique(buckets % 32)) == 32
    assert len(torch.unique(buckets // 32)) == 64


# ---------------------------------------------------------------------------------------------- test 2 (module)


def test_lsh_module_equals_bruteforce_reference_from_its_own_buckets(lsh_reference):
    """Anchors test 2 on the whole module (float64): norm, shared QK, hashing, attention, output projection."""
    cfg = _config(n_hashes=3)
    attn = LSHSelfAttention(cfg, 0).double().eval()
    lengths, L = [32, 19, 5], 32  # 8, 5 and 2 real chunks of 4
    info = _info(lengths, L)
    x = torch.randn(3, L, cfg.d_model, generator=torch.Generator().manual_seed(8), dtype=D64)
    with torch.no_grad():
        qk, v = _qk_v(attn, x)
        buckets = attn.compute_buckets(qk, info)
        ref, _ = lsh_reference(qk, v, buckets, info.key_valid, cfg.chunk_size)
        expected = _merge_heads(attn, ref)
        got, used = attn(x, info, buckets)
        again, own = attn(x, info)
    assert used is buckets
    assert torch.equal(own, buckets)
    for b, n in enumerate(lengths):
        assert (got[b, :n] - expected[b, :n]).abs().max().item() < 1e-10
        assert (again[b, :n] - expected[b, :n]).abs().max().item() < 1e-10


def test_gradcheck_lsh_module_with_fixed_buckets():
    """Anchors test 8: the module in float64 with the forward's buckets held fixed."""
    cfg = _config(d_model=4, n_heads=1, chunk_size=2, max_len=64, axial_pos_shape=(8, 8), n_hashes=2)
    attn = LSHSelfAttention(cfg, 0).double().eval()
    info = _info([8, 6], 8)  # 4 chunks: the LSH path
    x = torch.randn(2, 8, 4, generator=torch.Generator().manual_seed(9), dtype=D64, requires_grad=True)
    with torch.no_grad():
        _, buckets = attn(x, info)
    assert buckets is not None
    real = info.key_valid.unsqueeze(-1).to(D64)
    assert torch.autograd.gradcheck(
        lambda t: attn(t, info, buckets)[0] * real, (x,), eps=1e-6, atol=1e-7, fast_mode=True
    )


# ---------------------------------------------------------------------------------------------- test 1 (module)


def test_input_of_one_chunk_takes_the_exact_path():
    """Anchors test 1: L <= chunk takes full shared-QK attention (no hashing), same math as a loop."""
    cfg = _config(chunk_size=8, max_len=512)
    attn = LSHSelfAttention(cfg, 0).double().eval()
    info = _info([8, 5], 8)
    x = torch.randn(2, 8, cfg.d_model, generator=torch.Generator().manual_seed(10), dtype=D64)
    attn.hash_calls = 0
    with torch.no_grad():
        out, buckets = attn(x, info)
        qk, v = _qk_v(attn, x)
    assert buckets is None and attn.hash_calls == 0
    ref = torch.zeros_like(qk)
    for b, n in enumerate([8, 5]):
        for h in range(cfg.n_heads):
            for p in range(n):
                keys = [k for k in range(n) if k != p]
                logits = torch.stack([qk[b, h, p] @ (qk[b, h, k] / qk[b, h, k].norm()) for k in keys])
                ref[b, h, p] = torch.softmax(logits, 0) @ v[b, h, keys]
    expected = _merge_heads(attn, ref)
    for b, n in enumerate([8, 5]):
        assert (out[b, :n] - expected[b, :n]).abs().max().item() < 1e-12


@pytest.mark.parametrize("n_hashes", [1, 4])
def test_exact_path_equals_the_chunked_path_at_the_threshold(monkeypatch, n_hashes):
    """At 3 chunks the module takes the exact path; forcing the LSH path gives the same outputs."""
    cfg = _config(n_hashes=n_hashes)
    attn = LSHSelfAttention(cfg, 0).double().eval()
    info = _info([12, 9], 12)  # 3 chunks of 4
    x = torch.randn(2, 12, cfg.d_model, generator=torch.Generator().manual_seed(11), dtype=D64)
    with torch.no_grad():
        exact, b_exact = attn(x, info)
        monkeypatch.setattr(attn, "_full_path_fits", lambda n_chunks: False)
        hashed, b_hashed = attn(x, info)
    assert b_exact is None and b_hashed is not None and b_hashed.shape[2] == n_hashes
    for b, n in enumerate([12, 9]):
        assert (exact[b, :n] - hashed[b, :n]).abs().max().item() < 1e-12


def sdpa_reference(attn: LSHSelfAttention, x: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
    """The module's attention computed by torch's `scaled_dot_product_attention` (the reference): shared-QK
    (keys are the unit-normalised query-keys), no 1/sqrt(d) scaling, a query's own key at -1e5 and padding
    keys excluded, then the module's output projection."""
    B, L, _ = x.shape
    qk, v = _qk_v(attn, x)
    mask = torch.zeros(B, 1, L, L, dtype=x.dtype)
    mask.masked_fill_(~key_valid[:, None, None, :], float("-inf"))
    mask.diagonal(dim1=-2, dim2=-1).clamp_(max=-1e5)  # the own key: only when nothing else is there
    out = F.scaled_dot_product_attention(qk, F.normalize(qk, dim=-1, eps=1e-6), v, attn_mask=mask, scale=1.0)
    return attn.dense(out.transpose(1, 2).reshape(B, L, -1))


@pytest.mark.parametrize("n_hashes", [1, 4])
def test_lsh_path_equals_torch_sdpa_when_windows_cover_every_key(monkeypatch, n_hashes):
    """Against torch's SDPA, not the project's own O(L^2) path: at 3 chunks every query's LSH window holds
    every key, so the hashed, sorted, chunked computation must give exact attention."""
    cfg = _config(n_hashes=n_hashes)
    attn = LSHSelfAttention(cfg, 0).double().eval()
    info = _info([12, 9], 12)  # 3 chunks of 4; the second document padded
    x = torch.randn(2, 12, cfg.d_model, generator=torch.Generator().manual_seed(5), dtype=D64)
    monkeypatch.setattr(attn, "_full_path_fits", lambda n_chunks: False)
    with torch.no_grad():
        hashed, buckets = attn(x, info)
        reference = sdpa_reference(attn, x, info.key_valid)
    assert buckets is not None  # the LSH path ran
    for b, n in enumerate([12, 9]):
        assert (hashed[b, :n] - reference[b, :n]).abs().max().item() < 1e-10


# ---------------------------------------------------------------------------------------------- test 11 / 12


def test_lsh_regime_is_equivariant_to_permutations_that_keep_bucket_order():
    """Anchors test 11 (LSH regime): hashing is exactly permutation-equivariant; outputs are exactly
    equivariant when the permutation keeps each bucket's internal order (then every chunk is unchanged),
    and only approximately otherwise (chunk borders follow position order)."""
    cfg = _config(n_hashes=1, n_heads=1)
    attn = LSHSelfAttention(cfg, 0).double().eval()
    L = 32
    info = _info([L], L)
    gen = torch.Generator().manual_seed(12)
    x = torch.randn(1, L, cfg.d_model, generator=gen, dtype=D64)
    with torch.no_grad():
        out, buckets = attn(x, info)
    bucket = buckets[0, 0, 0]
    # sigma: a random permutation, then each bucket's new positions handed out in the old order
    pi = torch.randperm(L, generator=gen)
    sigma = torch.empty(L, dtype=torch.long)
    for value in torch.unique(bucket):
        members = torch.nonzero(bucket == value).flatten()  # ascending old positions
        sigma[members] = torch.sort(pi[members]).values
    assert not torch.equal(sigma, torch.arange(L))
    for perm, exact in ((sigma, True), (pi, False)):
        x_p = torch.empty_like(x)
        x_p[:, perm] = x
        with torch.no_grad():
            out_p, buckets_p = attn(x_p, info)
        assert torch.equal(buckets_p[0, 0, 0, perm], bucket)
        diff = (out_p[:, perm] - out).abs()
        if exact:
            assert diff.max().item() < 1e-12
        else:
            assert torch.isfinite(out_p).all()
            assert diff.mean().item() < out.abs().mean().item()


def test_more_hash_rounds_at_evaluation_than_in_training():
    """Anchors test 12: evaluation may use more rounds than training, and they approximate exact attention
    better (averaged over a batch of random documents)."""
    cfg = _config(n_hashes=2, n_hashes_eval=8, n_heads=1)
    attn = LSHSelfAttention(cfg, 0).double()
    assert attn.rotations.shape[1] == 8
    B, L = 4, 64
    info = _info([L] * B, L)
    x = torch.randn(B, L, cfg.d_model, generator=torch.Generator().manual_seed(13), dtype=D64)
    with torch.no_grad():
        attn.train()
        out_train, b_train = attn(x, info)
        attn.eval()
        out_eval, b_eval = attn(x, info)
        qk, v = _qk_v(attn, x)
        exact = _merge_heads(attn, full_attention(qk, v, info.key_valid))
    assert b_train.shape[2] == 2 and b_eval.shape[2] == 8
    assert torch.equal(b_train, b_eval[:, :, :2])  # training rounds are a prefix of the evaluation rounds
    err_train = (out_train - exact).abs().mean().item()
    err_eval = (out_eval - exact).abs().mean().item()
    assert 0 < err_eval < 0.9 * err_train
