"""Fixtures for the training tests: a small synthetic corpus on disk and a tiny, fast training config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from reformer_retrieval.train import CurriculumPhase, TrainConfig

TINY_MODEL = {
    "d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64, "embedding_dim": 16, "chunk_size": 16,
    "max_len": 1024, "axial_pos_shape": [32, 32], "n_hashes": 2,
}


def synthetic_texts(n_docs: int, seed: int = 0, min_words: int = 60, max_words: int = 400) -> list[str]:
    """Distinct documents of pseudo-words (each document draws from its own topic-skewed vocabulary)."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocab = ["".join(rng.choice(letters, size=int(rng.integers(2, 9)))) for _ in range(3000)]
    texts = []
    for d in range(n_docs):
        topic = rng.choice(len(vocab), size=150, replace=False)
        n = int(rng.integers(min_words, max_words))
        words = [vocab[int(i)] for i in rng.choice(topic, size=n)]
        sentences, i = [], 0
        while i < len(words):
            k = int(rng.integers(6, 15))
            sentences.append(" ".join(words[i : i + k]).capitalize() + ".")
            i += k
        paragraphs = [" ".join(sentences[j : j + 4]) for j in range(0, len(sentences), 4)]
        texts.append(f"Document {d}. " + "\n\n".join(paragraphs))
    return texts


def write_corpus(path: Path, texts: list[str], clusters: list[str] | None = None) -> Path:
    cols = {"id": [f"doc{i:03d}" for i in range(len(texts))], "text": texts}
    if clusters is not None:
        cols["cluster"] = clusters
    pq.write_table(pa.table(cols), path)
    return path


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with two train-*.parquet shards of synthetic documents (56 in all)."""
    root = tmp_path_factory.mktemp("corpus")
    texts = synthetic_texts(56, seed=1)
    write_corpus(root / "train-00000.parquet", texts[:30])
    pq.write_table(
        pa.table({"id": [f"doc{i:03d}" for i in range(30, 56)], "text": texts[30:]}), root / "train-00001.parquet"
    )
    return root


@pytest.fixture(scope="session")
def labelled_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A labelled set: 8 clusters of 3 near-duplicate versions each (id, text, cluster)."""
    from reformer_retrieval.train import augment

    base = synthetic_texts(8, seed=5, min_words=60, max_words=120)
    texts, clusters = [], []
    for c, text in enumerate(base):
        for v in range(3):
            texts.append(augment(text, 0.3, seed=(c, v)))
            clusters.append(f"c{c}")
    return write_corpus(tmp_path_factory.mktemp("labelled") / "labelled.parquet", texts, clusters)


@pytest.fixture
def tiny_train_config() -> TrainConfig:
    """A tiny model, short crops, 6 steps, validation at 64 and 256 tokens, all on CPU."""
    return TrainConfig(
        model=dict(TINY_MODEL),
        steps=6,
        lr=3e-3,
        warmup=0.2,
        seed=3,
        curriculum=(
            CurriculumPhase(until=0.5, max_tokens=96, batch_size=8, position_offset_prob=0.7),
            CurriculumPhase(until=1.0, max_tokens=256, batch_size=6, micro_batch=4, position_offset_prob=0.5),
        ),
        val_docs=8,
        val_long_docs=4,
        eval_lengths=(64, 256),
        eval_every=0,
        checkpoint_every=0,
        log_every=1,
        device="cpu",
        num_workers=0,
        progress=False,
    )


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread(one_thread):
    """Every training test runs on one intra-op thread (the root conftest's `one_thread`)."""
    yield
