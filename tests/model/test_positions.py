"""Axial position embeddings (anchors sec. 5, test 14)."""

from __future__ import annotations

import pytest
import torch

from reformer_retrieval import ReformerConfig, ReformerEncoder
from reformer_retrieval.model.positions import AxialPositionEmbedding


def test_parameter_count_is_factorised():
    emb = AxialPositionEmbedding((256, 256), (128, 128))
    assert sum(p.numel() for p in emb.parameters()) == 256 * 128 + 256 * 128  # not 65536 * 256
    assert emb.max_positions == 65536


def test_position_is_the_concatenation_of_its_row_and_column():
    torch.manual_seed(0)
    emb = AxialPositionEmbedding((4, 6), (3, 5))
    table = emb(24)
    assert table.shape == (24, 8)
    for p in range(24):
        expected = torch.cat([emb.weight_row[p // 6], emb.weight_col[p % 6]])
        assert torch.equal(table[p], expected)


@pytest.mark.parametrize("length", [1, 5, 6, 7, 17, 23])
def test_shorter_inputs_use_the_prefix_of_the_full_table(length):
    torch.manual_seed(1)
    emb = AxialPositionEmbedding((4, 6), (3, 5))
    assert torch.equal(emb(length), emb(24)[:length])


def test_64k_shape_is_accepted_and_longer_is_refused():
    emb = AxialPositionEmbedding((256, 256), (8, 8))
    table = emb(65536)
    assert table.shape == (65536, 16)
    assert torch.equal(table[65535], torch.cat([emb.weight_row[255], emb.weight_col[255]]))
    assert torch.equal(emb(1000), table[:1000])
    with pytest.raises(ValueError, match="65537"):
        emb(65537)


def test_gradients_reach_both_tables():
    emb = AxialPositionEmbedding((4, 6), (3, 5))
    emb(10).sum().backward()
    assert emb.weight_row.grad[:2].abs().sum() > 0 and emb.weight_row.grad[2:].abs().sum() == 0
    assert emb.weight_col.grad.abs().sum() > 0


def test_encoder_uses_config_axial_shape_and_dims():
    cfg = ReformerConfig(
        d_model=16, n_layers=1, n_heads=2, d_ff=16, embedding_dim=8, chunk_size=16, max_len=4096,
        axial_pos_shape=(64, 64), axial_pos_dims=(4, 12),
    )
    model = ReformerEncoder(cfg)
    assert model.position_embedding.weight_row.shape == (64, 4)
    assert model.position_embedding.weight_col.shape == (64, 12)


def test_position_offsets_select_the_shifted_rows_of_the_table():
    emb = AxialPositionEmbedding((8, 16), (3, 5))
    full = emb(128)
    offsets = torch.tensor([0, 17, 100])
    shifted = emb(20, offsets)
    assert shifted.shape == (3, 20, 8)
    for b, o in enumerate(offsets.tolist()):
        assert torch.equal(shifted[b], full[o : o + 20])
    with pytest.raises(ValueError, match="offsets"):
        emb(20, torch.tensor([109]))


def test_encoder_with_zero_offsets_equals_the_default_positions():
    cfg = ReformerConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32, embedding_dim=8, chunk_size=8,
                         max_len=256, axial_pos_shape=(16, 16))
    model = ReformerEncoder(cfg).eval()
    ids = torch.randint(4, 260, (2, 40))
    base = model(ids)
    assert torch.equal(model(ids, position_offsets=torch.zeros(2, dtype=torch.long)), base)
    assert not torch.allclose(model(ids, position_offsets=torch.tensor([0, 64])), base)
