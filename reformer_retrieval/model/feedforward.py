"""Position-wise feed-forward block, optionally applied a chunk of positions at a time.

Chunking along the sequence is numerically identical to the unchunked block (the block is position-wise)
and bounds the ``(positions, d_ff)`` intermediate, in the forward and in the reversible recomputation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ChunkedFeedForward"]


class ChunkedFeedForward(nn.Module):
    """LayerNorm -> Linear(d, d_ff) -> GELU -> dropout -> Linear(d_ff, d) -> dropout.

    Args:
        d_model: Input and output width.
        d_ff: Inner width.
        dropout: Dropout probability (training only).
        chunk_size: Positions processed at once (0 = all).
        eps: LayerNorm epsilon.
    """

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.0, chunk_size: int = 0, eps: float = 1e-12):
        super().__init__()
        self.norm = nn.LayerNorm(d_model, eps=eps)
        self.dense_in = nn.Linear(d_model, d_ff)
        self.dense_out = nn.Linear(d_ff, d_model)
        self.dropout = dropout
        self.chunk_size = chunk_size

    def _block(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.dense_in(self.norm(x)))
        h = F.dropout(h, self.dropout, self.training)
        return F.dropout(self.dense_out(h), self.dropout, self.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block to ``x`` of shape ``(batch, length, d_model)``."""
        if self.chunk_size <= 0 or x.shape[1] <= self.chunk_size:
            return self._block(x)
        return torch.cat([self._block(part) for part in x.split(self.chunk_size, dim=1)], dim=1)
