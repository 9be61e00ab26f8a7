"""reformer-retrieval: near-duplicate detection and search over long documents with a Reformer encoder."""

from __future__ import annotations

__version__ = "0.1.0"

from reformer_retrieval.config import ReformerConfig
from reformer_retrieval.encode import Encoder
from reformer_retrieval.model.encoder import ReformerEncoder
from reformer_retrieval.tokenizer import ByteTokenizer
from reformer_retrieval.vectorizer import ReformerVectorizer

__all__ = ["ByteTokenizer", "Encoder", "ReformerConfig", "ReformerEncoder", "ReformerVectorizer", "__version__"]
