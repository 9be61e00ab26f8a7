"""Axial position embeddings: position ``p`` gets ``[E1[p // n2]; E2[p % n2]]``.

Two small tables (``n1 * d1 + n2 * d2`` parameters) stand in for an ``n1 * n2`` by ``d_model`` table. An input
shorter than ``n1 * n2`` uses the prefix of the flattened table, so the embedding of position ``p`` never
depends on the input length.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["AxialPositionEmbedding"]


class AxialPositionEmbedding(nn.Module):
    """Axial (factorised) learned position embeddings.

    Args:
        shape: ``(n1, n2)``; positions ``0 .. n1 * n2 - 1`` are representable.
        dims: ``(d1, d2)``; the output width is ``d1 + d2``.
        init_std: Standard deviation of the normal initialisation.
    """

    def __init__(self, shape: tuple[int, int], dims: tuple[int, int], init_std: float = 0.02) -> None:
        super().__init__()
        self.shape = (int(shape[0]), int(shape[1]))
        self.dims = (int(dims[0]), int(dims[1]))
        self.weight_row = nn.Parameter(torch.randn(self.shape[0], self.dims[0]) * init_std)
        self.weight_col = nn.Parameter(torch.randn(self.shape[1], self.dims[1]) * init_std)

    @property
    def max_positions(self) -> int:
        """Number of representable positions."""
        return self.shape[0] * self.shape[1]

    def forward(self, length: int, offsets: torch.Tensor | None = None) -> torch.Tensor:
        """Embeddings of positions ``0 .. length - 1``, shape ``(length, d1 + d2)``.

        With ``offsets`` (a (batch,) long tensor), row ``b`` gets positions ``offsets[b] .. offsets[b] + length - 1``
        and the result is ``(batch, length, d1 + d2)``. Training with random offsets lets short crops train
        the positions that only long documents reach at inference.
        """
        if offsets is not None:
            if int(offsets.min()) < 0 or int(offsets.max()) + length > self.max_positions:
                raise ValueError(
                    f"position offsets plus length {length} must lie in [0, {self.max_positions}]"
                )
            pos = offsets.to(self.weight_row.device).unsqueeze(1) + torch.arange(length, device=offsets.device)
            rows = self.weight_row[pos // self.shape[1]]
            cols = self.weight_col[pos % self.shape[1]]
            return torch.cat([rows, cols], dim=-1)
        if length > self.max_positions:
            raise ValueError(
                f"input of {length} positions exceeds the axial position shape {self.shape} "
                f"({self.max_positions} positions)"
            )
        n_rows = -(-length // self.shape[1])
        rows = self.weight_row[:n_rows, None, :].expand(n_rows, self.shape[1], self.dims[0])
        cols = self.weight_col[None, :, :].expand(n_rows, self.shape[1], self.dims[1])
        table = torch.cat([rows, cols], dim=-1).reshape(n_rows * self.shape[1], -1)
        return table[:length]
