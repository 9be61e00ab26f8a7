"""Vector and lexical indexes (installed as ``reformer_retrieval.indexes``)."""
