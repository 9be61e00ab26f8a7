"""pipeline.embed.VectorsTask: the staged dedup from an embeddings dataset made beforehand (vectors matched by id)."""

from __future__ import annotations

import numpy as np
import pytest

from reformer_retrieval.corpus import CorpusError, EmbeddingWriter
from reformer_retrieval.dedup import find_duplicates
from reformer_retrieval.pipeline import dedup_pipeline

from .conftest import write_corpus


def _vectors(n: int, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors; every fifth is a near copy (cosine ~0.97) of the one before. Returns (vectors, group)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    group = np.arange(n)
    for i in range(1, n, 5):
        x[i] = x[i - 1] + 0.25 * rng.standard_normal(dim).astype(np.float32) * np.linalg.norm(x[i - 1]) / dim**0.5
        group[i] = group[i - 1]
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), group


def _write(path, ids, vectors, model_id="m-test"):
    with EmbeddingWriter(path, dim=vectors.shape[1], model_id=model_id) as w:
        w.write(ids, vectors, np.full(len(ids), 7), np.zeros(len(ids), bool))


def _partition(cluster: np.ndarray) -> set[frozenset[int]]:
    return {frozenset(np.flatnonzero(cluster == c).tolist()) for c in np.unique(cluster)}


def test_vectors_from_shuffled_files_give_the_in_memory_clusters(tmp_path):
    n = 600
    vectors, group = _vectors(n)
    ids = [f"d{i:04d}" for i in range(n)]
    corpus = write_corpus(tmp_path / "corpus.parquet", ids, [f"text {i}" for i in range(n)], row_group_size=100)
    order = np.random.default_rng(1).permutation(n)  # the embeddings in another order, in two files
    (tmp_path / "emb").mkdir()
    for k, part in enumerate(np.array_split(order, 2)):
        _write(tmp_path / "emb" / f"part-{k}.parquet", [ids[i] for i in part], vectors[part])
    res = dedup_pipeline(corpus, tmp_path / "out", method="embedding", embeddings=tmp_path / "emb",
                         threshold=0.9, shard_rows=100)
    mem = find_duplicates(ids, vectors=vectors, method="embedding", threshold=0.9, index="flat",
                          lengths=np.array([len(f"text {i}") for i in range(n)]))
    assert _partition(res.cluster_id) == _partition(mem.cluster_id)
    assert res.summary["model_id"] == "m-test" and res.n_clusters < n
    assert _partition(res.cluster_id) == _partition(group)  # the planted copies, nothing else
    lsh = dedup_pipeline(corpus, tmp_path / "out-lsh", method="embedding", embeddings=tmp_path / "emb",
                         threshold=0.9, index="lsh", shard_rows=100)
    assert _partition(lsh.cluster_id) == _partition(group)


def test_a_missing_or_repeated_id_is_one_line_naming_it(tmp_path):
    n = 40
    vectors, _ = _vectors(n)
    ids = [f"d{i:04d}" for i in range(n)]
    corpus = write_corpus(tmp_path / "corpus.parquet", ids, [f"text {i}" for i in range(n)])
    _write(tmp_path / "short.parquet", ids[:-1], vectors[:-1])
    with pytest.raises(CorpusError, match=r"no vector for id 'd0039' \(corpus row 39\)"):
        dedup_pipeline(corpus, tmp_path / "o1", method="embedding", embeddings=tmp_path / "short.parquet",
                       threshold=0.9)
    (tmp_path / "two").mkdir()
    _write(tmp_path / "two" / "a.parquet", ids, vectors)
    _write(tmp_path / "two" / "b.parquet", ids[5:6], vectors[5:6])
    with pytest.raises(CorpusError, match=r"b\.parquet: id 'd0005' also has a vector in an earlier"):
        dedup_pipeline(corpus, tmp_path / "o2", method="embedding", embeddings=tmp_path / "two", threshold=0.9)
    write_corpus(tmp_path / "not-emb.parquet", ids, ids)
    with pytest.raises(CorpusError, match="not an embeddings file"):
        dedup_pipeline(corpus, tmp_path / "o3", method="embedding", embeddings=tmp_path / "not-emb.parquet",
                       threshold=0.9)


def test_the_final_step_reads_the_vectors_only_for_keep_central(tmp_path, monkeypatch):
    """The clusters step on the driver reads ``truncated`` of the embed stage; every vector only for keep='central'."""
    from reformer_retrieval.pipeline import flow

    n = 60
    vectors, _ = _vectors(n)
    ids = [f"d{i:04d}" for i in range(n)]
    corpus = write_corpus(tmp_path / "corpus.parquet", ids, [f"text {i}" for i in range(n)])
    _write(tmp_path / "e.parquet", ids, vectors)
    read_columns: list[list[str]] = []
    table = flow._table
    monkeypatch.setattr(flow, "_table", lambda paths, columns, filter=None: (
        read_columns.append(list(columns)), table(paths, columns, filter))[1])
    for keep in ("longest", "central"):
        read_columns.clear()
        res = dedup_pipeline(corpus, tmp_path / keep, method="embedding", embeddings=tmp_path / "e.parquet",
                             threshold=0.9, keep=keep)
        wanted = [c for c in read_columns if "truncated" in c]
        assert len(wanted) == 1 and ("embedding" in wanted[0]) == (keep == "central")
        assert res.is_representative.sum() == res.n_clusters


def test_verify_in_blocks_of_edges_gives_the_same_pairs(tmp_path, monkeypatch):
    """`VerifyTask` computes cosines in blocks of `COSINE_CHUNK` edges, b's vectors loaded once per row."""
    import pyarrow.parquet as pq

    from reformer_retrieval.pipeline import verify

    n = 400
    vectors, _ = _vectors(n, seed=3)
    ids = [f"d{i:04d}" for i in range(n)]
    corpus = write_corpus(tmp_path / "corpus.parquet", ids, [f"text {i}" for i in range(n)], row_group_size=100)
    _write(tmp_path / "e.parquet", ids, vectors)
    whole = dedup_pipeline(corpus, tmp_path / "whole", method="embedding", embeddings=tmp_path / "e.parquet",
                           threshold=0.5, shard_rows=100)
    monkeypatch.setattr(verify, "COSINE_CHUNK", 7)
    blocks = dedup_pipeline(corpus, tmp_path / "blocks", method="embedding", embeddings=tmp_path / "e.parquet",
                            threshold=0.5, shard_rows=100)
    assert pq.read_table(tmp_path / "whole" / "pairs.parquet").num_rows >= n // 5  # the planted copies at least
    for name in ("pairs.parquet", "clusters.parquet"):
        assert pq.read_table(tmp_path / "blocks" / name).equals(pq.read_table(tmp_path / "whole" / name)), name
    assert len(blocks.clusters()) == len(whole.clusters())
