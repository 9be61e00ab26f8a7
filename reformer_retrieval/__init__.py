"""reformer-retrieval: near-duplicate detection and search over long documents with a Reformer encoder."""

from __future__ import annotations

__version__ = "0.1.0"

from reformer_retrieval.config import ReformerConfig
from reformer_retrieval.model.encoder import ReformerEncoder
from reformer_retrieval.tokenizer import ByteTokenizer

__all__ = ["ByteTokenizer", "ReformerConfig", "ReformerEncoder", "__version__"]
