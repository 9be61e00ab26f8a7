"""Chunked local attention layers: position-ordered chunks, one neighbour each side, no wrap-around."""

from __future__ import annotations

import pytest
import torch

from reformer_retrieval import ReformerConfig, ReformerEncoder
from reformer_retrieval.model.local_attention import LocalSelfAttention
from reformer_retrieval.model.lsh_attention import LSHSelfAttention, SequenceInfo

D64 = torch.float64


def _config(**kw) -> ReformerConfig:
    base = dict(
        d_model=8, n_layers=2, n_heads=2, d_ff=16, embedding_dim=4, chunk_size=4, max_len=256,
        axial_pos_shape=(16, 16), attention_layers=("local", "lsh"),
    )
    base.update(kw)
    return ReformerConfig(**base)


def _info(lengths: list[int], L: int) -> SequenceInfo:
    mask = torch.zeros(len(lengths), L, dtype=torch.bool)
    for row, n in enumerate(lengths):
        mask[row, :n] = True
    return SequenceInfo.from_mask(mask)


def _reference_local(attn: LocalSelfAttention, x: torch.Tensor, info: SequenceInfo) -> torch.Tensor:
    """Loop reference: a query in chunk c attends the real keys of chunks c-1, c, c+1 (clipped), not itself."""
    B, L, _ = x.shape
    H, d, c = attn.n_heads, attn.head_dim, attn.chunk
    h = attn.norm(x)
    qk = attn.query_key(h).view(B, L, H, d).transpose(1, 2)
    v = attn.value(h).view(B, L, H, d).transpose(1, 2)
    out = torch.zeros_like(qk)
    n_chunks = L // c
    for b in range(B):
        valid = info.key_valid[b].tolist()
        for hd in range(H):
            for p in range(L):
                if not valid[p]:
                    continue
                ci = p // c
                window = [j for j in (ci - 1, ci, ci + 1) if 0 <= j < n_chunks]
                keys = [k for j in window for k in range(j * c, (j + 1) * c) if valid[k] and k != p]
                if not keys:
                    out[b, hd, p] = v[b, hd, p]
                    continue
                logits = torch.stack([qk[b, hd, p] @ (qk[b, hd, k] / qk[b, hd, k].norm()) for k in keys])
                out[b, hd, p] = torch.softmax(logits, 0) @ v[b, hd, keys]
    return attn.dense(out.transpose(1, 2).reshape(B, L, H * d))


def test_local_attention_equals_a_loop_reference():
    cfg = _config(n_hashes=2)
    attn = LocalSelfAttention(cfg, 0).double().eval()
    lengths, L = [32, 21, 3], 32  # 8 chunks of 4
    info = _info(lengths, L)
    x = torch.randn(3, L, cfg.d_model, generator=torch.Generator().manual_seed(0), dtype=D64)
    with torch.no_grad():
        out, buckets = attn(x, info)
        ref = _reference_local(attn, x, info)
    assert buckets is None  # no hashing
    for b, n in enumerate(lengths):
        assert (out[b, :n] - ref[b, :n]).abs().max().item() < 1e-10


def test_local_attention_has_no_rotations_and_never_hashes():
    cfg = _config()
    attn = LocalSelfAttention(cfg, 0).eval()
    assert attn.kind == "local"
    assert "rotations" not in attn.state_dict()
    x = torch.randn(1, 64, cfg.d_model, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        attn(x, _info([64], 64))
    assert attn.hash_calls == 0


def test_local_attention_is_local_and_does_not_wrap():
    """A change in the last chunk is invisible to the first chunk (no wrap-around), visible next door."""
    cfg = _config()
    attn = LocalSelfAttention(cfg, 0).double().eval()
    L = 32
    info = _info([L], L)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(1, L, cfg.d_model, generator=gen, dtype=D64)
    with torch.no_grad():
        base, _ = attn(x, info)
        far = x.clone()
        far[0, 31] += torch.randn(cfg.d_model, generator=gen, dtype=D64)
        out_far, _ = attn(far, info)
        near = x.clone()
        near[0, 5] += torch.randn(cfg.d_model, generator=gen, dtype=D64)
        out_near, _ = attn(near, info)
    assert torch.equal(out_far[0, :24], base[0, :24])  # chunks 0-5 do not see chunk 7
    assert (out_far[0, 24:] - base[0, 24:]).abs().max().item() > 1e-6  # chunks 6 and 7 do
    assert (out_near[0, :4] - base[0, :4]).abs().max().item() > 1e-6  # chunk 0 sees chunk 1
    assert torch.equal(out_near[0, 12:], base[0, 12:])


def test_local_exact_path_at_two_chunks_equals_the_chunked_path(monkeypatch):
    cfg = _config()
    attn = LocalSelfAttention(cfg, 0).double().eval()
    info = _info([8, 6], 8)  # 2 chunks: every query's window covers everything
    x = torch.randn(2, 8, cfg.d_model, generator=torch.Generator().manual_seed(3), dtype=D64)
    with torch.no_grad():
        exact, _ = attn(x, info)
        monkeypatch.setattr(attn, "_full_path_fits", lambda n_chunks: False)
        chunked, _ = attn(x, info)
    for b, n in enumerate([8, 6]):
        assert (exact[b, :n] - chunked[b, :n]).abs().max().item() < 1e-12


@pytest.mark.parametrize("kinds", [("local", "lsh"), ("lsh", "local"), ("local", "local")])
def test_encoder_with_local_layers(kinds, make_doc, make_batch):
    cfg = _config(attention_layers=kinds, local_chunk_size=8)
    model = ReformerEncoder(cfg).eval()
    kinds_built = [type(a) for a in model.attention_layers]
    expected = [LocalSelfAttention if k == "local" else LSHSelfAttention for k in kinds]
    assert kinds_built == expected
    assert model.pad_multiple == 8
    docs = [make_doc(100, 0), make_doc(37, 1)]
    ids, mask = make_batch(docs, total=150)
    with torch.no_grad():
        emb = model(ids, mask)
        alone = [model(*make_batch([d])) for d in docs]
    assert torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)
    for i in range(2):
        assert (emb[i] - alone[i][0]).abs().max().item() < 1e-5  # batch and padding invariant
