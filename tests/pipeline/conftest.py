"""Shared corpora for the staged-dedup tests: the bundled sample and generated planted near-duplicates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from reformer_retrieval.indexes import set_threads

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "examples" / "sample.parquet"


@pytest.fixture(autouse=True)
def _one_faiss_thread():
    before = set_threads(None)
    set_threads(1)
    yield
    set_threads(before)


def planted_texts(n: int, seed: int = 0, group_every: int = 10, vocab: int = 5000,
                  words: int = 40) -> tuple[list[str], list[str]]:
    """``n`` short random documents; every ``group_every``-th starts a group of 2-4 edited copies.

    Returns (ids, texts). Copies change about 5% of the words, so their word-2-gram Jaccard is ~0.8.
    """
    rng = np.random.default_rng(seed)
    lexicon = np.array([f"w{i}" for i in range(vocab)])
    texts: list[str] = []
    while len(texts) < n:
        base = rng.choice(lexicon, size=words)
        texts.append(" ".join(base))
        if len(texts) % group_every == 1:
            for _ in range(int(rng.integers(1, 4))):
                copy = base.copy()
                edits = rng.random(words) < 0.05
                copy[edits] = rng.choice(lexicon, size=int(edits.sum()))
                texts.append(" ".join(copy))
    texts = texts[:n]
    return [f"doc-{i:06d}" for i in range(n)], texts


def write_corpus(path: Path, ids: list, texts: list, row_group_size: int | None = None) -> Path:
    """A Parquet corpus (``id``, ``text``) with the given row-group size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": ids, "text": texts}), path, row_group_size=row_group_size)
    return path
