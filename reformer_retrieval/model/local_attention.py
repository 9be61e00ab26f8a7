"""Chunked local attention: the LSH block's math with chunks taken in position order (no hashing).

Each chunk attends itself and its neighbouring chunks; there is no wrap-around (the first chunk does not see
the last one), which is what a bidirectional encoder wants from a local layer.
"""

from __future__ import annotations

from reformer_retrieval.config import ReformerConfig
from reformer_retrieval.model.lsh_attention import LSHSelfAttention

__all__ = ["LocalSelfAttention"]


class LocalSelfAttention(LSHSelfAttention):
    """Shared-QK attention inside position-ordered chunks of ``config.local_chunk`` tokens."""

    def __init__(self, config: ReformerConfig, layer_idx: int) -> None:
        super().__init__(config, layer_idx, kind="local")
