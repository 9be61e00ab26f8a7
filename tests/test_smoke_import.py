"""The installed package exposes its public API."""

import reformer_retrieval


def test_public_api_names():
    for name in reformer_retrieval.__all__:
        assert hasattr(reformer_retrieval, name), name
