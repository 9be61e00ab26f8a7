"""A tiny-width model encodes a full 65,536-token input on CPU (LSH and local layers, factorised buckets)."""

from __future__ import annotations

import pytest
import torch

from reformer_retrieval import ByteTokenizer, ReformerConfig, ReformerEncoder


@pytest.fixture(scope="module")
def long_model() -> ReformerEncoder:
    cfg = ReformerConfig(
        d_model=16, n_layers=2, n_heads=1, d_ff=32, embedding_dim=8, chunk_size=64, n_hashes=2,
        max_len=65536, axial_pos_shape=(256, 256), attention_layers=("lsh", "local"),
    )
    torch.manual_seed(0)
    return ReformerEncoder(cfg).eval()


@pytest.mark.slow
def test_encodes_65536_tokens_on_cpu(long_model):
    tok = ByteTokenizer(max_len=65536)
    text = "The quick brown fox jumps over the lazy dog. " * 1500  # 67,500 bytes
    batch = tok([text])
    assert batch["input_ids"].shape == (1, 65536)
    assert batch["n_tokens"] == [65536] and batch["truncated"] == [True]
    lsh = long_model.attention_layers[0]
    lsh.hash_calls = 0
    with torch.no_grad():
        emb = long_model(batch["input_ids"], batch["attention_mask"])
    assert lsh.hash_calls == 1  # the LSH path, not the exact one
    assert emb.shape == (1, 8) and torch.isfinite(emb).all()
    assert abs(emb.norm().item() - 1.0) < 1e-5


@pytest.mark.slow
def test_unaligned_length_near_the_limit_is_padded_and_longer_is_refused(long_model):
    ids = torch.randint(4, 260, (1, 65536 - 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        emb = long_model(ids)
    assert torch.isfinite(emb).all()
    with pytest.raises(ValueError, match="max_len"):
        long_model(torch.randint(4, 260, (1, 65537)))
