"""Self-supervised near-duplicate training of the encoder."""
