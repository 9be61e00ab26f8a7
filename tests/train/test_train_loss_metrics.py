"""The InfoNCE loss and the validation metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reformer_retrieval.train import info_nce, pair_metrics, recall_at_1
from reformer_retrieval.train.metrics import embed_token_ids, length_batches


def _unit(n: int, d: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_info_nce_matches_cross_entropy_and_prefers_aligned_views() -> None:
    a, b = _unit(8, 16, 0), _unit(8, 16, 1)
    logits = a @ b.T / 0.1
    target = torch.arange(8)
    expected = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    assert torch.allclose(info_nce(a, b, 0.1), expected)
    assert info_nce(a, a, 0.05) < info_nce(a, b, 0.05)
    assert torch.allclose(info_nce(a, b, 0.1, labels=torch.arange(8)), expected)  # unique labels: same loss


def test_info_nce_cluster_labels_make_extra_positives() -> None:
    a = _unit(4, 8, 2)
    b = a[[1, 0, 3, 2]]  # each row's view sits at its cluster partner's index
    labels = torch.tensor([0, 0, 1, 1])
    assert info_nce(a, b, 0.05, labels) < info_nce(a, b, 0.05)
    p = torch.exp(torch.tensor(0.0))
    assert info_nce(a, a, 1e-3, torch.zeros(4, dtype=torch.long)) == pytest.approx(0.0, abs=1e-6 * float(p))


def test_info_nce_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="shape"):
        info_nce(_unit(3, 4, 0), _unit(4, 4, 0))
    with pytest.raises(ValueError, match="temperature"):
        info_nce(_unit(3, 4, 0), _unit(3, 4, 0), 0.0)


def test_recall_at_1_and_mrr() -> None:
    g = np.eye(4, dtype=np.float32)
    q = g[[0, 1, 3, 2]]  # queries 2 and 3 find each other's match
    r = recall_at_1(q, g)
    assert r["recall@1"] == 0.5 and r["mrr"] == pytest.approx((1 + 1 + 0.5 + 0.5) / 4)
    assert recall_at_1(q, g, subset=[0, 1])["recall@1"] == 1.0


def test_pair_metrics_on_a_known_case() -> None:
    labels = ["a", "a", "b", "b"]
    sim = np.array([[1, 0.9, 0.1, 0.2], [0.9, 1, 0.3, 0.1], [0.1, 0.3, 1, 0.8], [0.2, 0.1, 0.8, 1]])
    m = pair_metrics(sim, labels)
    assert m["roc_auc"] == 1.0 and m["best_f1"] == 1.0 and m["n_pairs"] == 6 and m["n_positive"] == 2
    flipped = pair_metrics(-sim, labels)
    assert flipped["roc_auc"] == 0.0
    with pytest.raises(ValueError, match="positive and negative"):
        pair_metrics(sim, ["a", "b", "c", "d"])


def test_length_batches_respect_the_budget() -> None:
    lengths = [10, 500, 40, 40, 300, 5]
    batches = length_batches(lengths, batch_tokens=600)
    assert sorted(i for b in batches for i in b) == list(range(6))
    for b in batches:
        assert len(b) == 1 or max(lengths[i] for i in b) * len(b) <= 600


def test_embed_token_ids_is_batch_invariant() -> None:
    from reformer_retrieval import ReformerConfig, ReformerEncoder

    torch.manual_seed(0)
    model = ReformerEncoder(ReformerConfig(d_model=32, n_layers=2, n_heads=2, d_ff=64, embedding_dim=16,
                                           chunk_size=16, max_len=1024, axial_pos_shape=(32, 32)))
    rng = np.random.default_rng(0)
    ids = [rng.integers(4, 260, size=n) for n in (20, 200, 90, 7)]
    together = embed_token_ids(model, ids, batch_tokens=4096)
    alone = np.stack([embed_token_ids(model, [x])[0] for x in ids])
    assert np.allclose(together, alone, atol=1e-5)
    assert np.allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5) and model.training
    assert not math.isnan(float(together.sum()))
