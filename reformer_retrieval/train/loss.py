"""The contrastive objective: symmetric InfoNCE over two views, with optional supervised (cluster) positives."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["info_nce"]


def info_nce(
    a: torch.Tensor, b: torch.Tensor, temperature: float = 0.05, labels: torch.Tensor | None = None
) -> torch.Tensor:
    """Symmetric InfoNCE between two views of the same batch of documents.

    Row ``i`` of ``a`` and row ``i`` of ``b`` are two views of document ``i``: a positive pair. Every other
    row of the other view is a negative, except rows whose label equals row ``i``'s label, which count as
    further positives (multi-positive InfoNCE: ``-log(sum_pos exp(s) / sum_all exp(s))``). The loss is the
    mean of the a->b and b->a directions.

    Args:
        a, b: (B, D) embeddings (unit vectors; the logits are cosine similarities / temperature).
        temperature: Softmax temperature (> 0).
        labels: (B,) integer labels; ``None`` means every document is its own class.

    Returns:
        A scalar tensor (float32).
    """
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(f"info_nce needs two (B, D) tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logits = a.float() @ b.float().T / temperature
    n = a.shape[0]
    if labels is None:
        target = torch.arange(n, device=a.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    labels = labels.to(a.device)
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
    positive = labels[:, None] == labels[None, :]
    return 0.5 * (_multi_positive(logits, positive) + _multi_positive(logits.T, positive.T))


def _multi_positive(logits: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    log_all = torch.logsumexp(logits, dim=1)
    log_pos = torch.logsumexp(logits.masked_fill(~positive, float("-inf")), dim=1)
    return (log_all - log_pos).mean()
