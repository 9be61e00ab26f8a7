"""The optimizer of the contextual-channel trainers (`distill`, `window_identity`): AdamW with weight decay on
the weight matrices only."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["adamw"]


def adamw(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over ``model``'s parameters in two groups, in parameter order: matrices (``dim >= 2``) other than
    embeddings with ``weight_decay``, everything else (biases, norms, embeddings) without."""
    decay, rest = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and "embedding" not in name else rest).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}],
                             lr=lr)
