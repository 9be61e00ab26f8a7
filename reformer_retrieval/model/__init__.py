"""The Reformer encoder: LSH attention, reversible layers, chunked feed-forward, axial positions."""

from reformer_retrieval.model.encoder import ReformerEncoder

__all__ = ["ReformerEncoder"]
