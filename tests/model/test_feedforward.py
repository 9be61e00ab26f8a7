"""Chunked feed-forward equals the unchunked block, outputs and gradients (anchors sec. 5, test 9)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from reformer_retrieval import ReformerConfig, ReformerEncoder
from reformer_retrieval.model.feedforward import ChunkedFeedForward


def _run(ff: ChunkedFeedForward, x: torch.Tensor, w: torch.Tensor):
    x = x.clone().requires_grad_(True)
    ff.zero_grad()
    out = ff(x)
    (out * w).sum().backward()
    return out.detach(), x.grad.clone(), {n: p.grad.clone() for n, p in ff.named_parameters()}


def test_block_is_layernorm_dense_gelu_dense():
    torch.manual_seed(0)
    ff = ChunkedFeedForward(6, 10).eval()
    x = torch.randn(2, 5, 6)
    expected = ff.dense_out(F.gelu(ff.dense_in(F.layer_norm(x, (6,), ff.norm.weight, ff.norm.bias, 1e-12))))
    assert torch.allclose(ff(x), expected, atol=1e-6)


@pytest.mark.parametrize("chunk", [1, 3, 4, 5, 10, 64])
def test_chunked_feed_forward_equals_unchunked(chunk):
    """Chunk 1, odd and non-dividing (3, 4 for length 10), dividing (5), whole (10) and larger (64)."""
    torch.manual_seed(1)
    ref_ff = ChunkedFeedForward(8, 16, chunk_size=0).train()
    ff = ChunkedFeedForward(8, 16, chunk_size=chunk).train()
    ff.load_state_dict(ref_ff.state_dict())
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3, 10, 8, generator=gen)
    w = torch.randn(3, 10, 8, generator=gen)
    out_ref, gx_ref, gp_ref = _run(ref_ff, x, w)
    out, gx, gp = _run(ff, x, w)
    assert out.shape == out_ref.shape
    assert torch.allclose(out, out_ref, atol=1e-6)
    assert torch.allclose(gx, gx_ref, atol=1e-6)
    for name in gp_ref:
        assert torch.allclose(gp[name], gp_ref[name], atol=1e-5), name


def test_ff_chunking_in_the_model_changes_nothing():
    """Same embeddings and parameter grads with ff_chunk_size 0 and 7, through the reversible recompute."""
    cfg = ReformerConfig(
        d_model=16, n_layers=2, n_heads=2, d_ff=32, embedding_dim=8, chunk_size=16, max_len=1024,
        axial_pos_shape=(32, 32), n_hashes=2,
    )
    torch.manual_seed(3)
    ref = ReformerEncoder(cfg).train()
    chunked = ReformerEncoder(cfg.replace(ff_chunk_size=7)).train()
    chunked.load_state_dict(ref.state_dict())
    assert all(layer.feed_forward.chunk_size == 7 for layer in chunked.stack.layers)
    ids = torch.randint(4, 260, (2, 100), generator=torch.Generator().manual_seed(4))
    results = []
    for model in (ref, chunked):
        emb = model(ids)
        emb.sum().backward()
        results.append((emb.detach(), {n: p.grad for n, p in model.named_parameters()}))
    assert torch.allclose(results[0][0], results[1][0], atol=1e-6)
    for name, g in results[0][1].items():
        assert torch.allclose(g, results[1][1][name], atol=1e-5), name
