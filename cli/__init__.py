"""Command-line interface (installed as ``reformer_retrieval.cli``): one module per verb group."""
