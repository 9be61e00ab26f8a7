"""Near-duplicate detection: union-find, candidates per index and method, verification, outputs."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from reformer_retrieval.indexes import set_threads

from reformer_retrieval import ReformerEncoder
from reformer_retrieval.dedup import (
    DEFAULT_EMBEDDING_THRESHOLD,
    DEFAULT_MINHASH_THRESHOLD,
    dedup_corpus,
    dedup_embeddings,
    default_threshold,
    find_duplicates,
    union_find,
)


@pytest.fixture(autouse=True)
def _one_thread():
    before = set_threads(None)
    set_threads(1)
    yield
    set_threads(before)


def _planted(n: int = 300, dim: int = 32, seed: int = 0) -> tuple[np.ndarray, list[list[int]]]:
    """Random unit vectors with planted groups of near-duplicates (cosine > 0.97 within a group)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim))
    groups = [g for g in ([0, 1, 2], [10, 11], [50, 51, 52, 53], [299, 100]) if max(g) < n]
    for g in groups:
        for member in g[1:]:
            x[member] = x[g[0]] + 0.1 * rng.standard_normal(dim)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), groups


def test_union_find_hand_made_pairs():
    labels = union_find(7, np.array([5, 1, 4, 2]), np.array([6, 2, 5, 1]))
    assert labels.tolist() == [0, 1, 1, 2, 3, 3, 3]
    assert union_find(3, np.array([], dtype=np.int64), np.array([], dtype=np.int64)).tolist() == [0, 1, 2]
    # the edge order does not change the labels
    again = union_find(7, np.array([2, 4, 5, 1]), np.array([1, 5, 6, 2]))
    assert again.tolist() == labels.tolist()
    with pytest.raises(ValueError, match=r"0\.\.2"):
        union_find(3, np.array([0]), np.array([3]))


@pytest.mark.parametrize("index", ["flat", "hnsw", "lsh", "ivfpq"])
def test_embedding_dedup_finds_planted_groups(index):
    x, groups = _planted()
    ids = [f"d{i}" for i in range(len(x))]
    params = {"nbits": 2} if index == "ivfpq" else None  # 300 vectors train 2-bit codes (39 x 4 <= 300)
    res = find_duplicates(ids, vectors=x, method="embedding", threshold=0.9, index=index, keep="first",
                          index_params=params)
    found = sorted(sorted(c) for c in res.clusters())
    assert found == sorted(sorted(f"d{i}" for i in g) for g in groups)
    assert len(res.ids) == len(x) and res.cluster_id.shape == (len(x),)
    # every kept pair was verified exactly
    exact = np.einsum("ij,ij->i", x[res.pair_a], x[res.pair_b])
    np.testing.assert_allclose(res.pair_cosine, exact, atol=1e-5)
    assert np.all(res.pair_score >= np.float32(0.9))
    assert set(res.pair_method) == {"embedding"}
    assert res.summary["documents"] == 300 and res.summary["clusters"] == 300 - 7
    assert res.summary["duplicates"] == 7 and res.summary["duplicate_clusters"] == 4


def test_representatives():
    x, _ = _planted()
    ids = list(range(300))
    lengths = np.ones(300)
    lengths[2] = 10  # the longest of group 0
    first = find_duplicates(ids, vectors=x, threshold=0.9, keep="first")
    longest = find_duplicates(ids, vectors=x, threshold=0.9, keep="longest", lengths=lengths)
    central = find_duplicates(ids, vectors=x, threshold=0.9, keep="central")
    for res in (first, longest, central):
        assert np.bincount(res.cluster_id, weights=res.is_representative).tolist() == [1] * res.n_clusters
    assert first.is_representative[0] and not first.is_representative[2]
    assert longest.is_representative[2] and not longest.is_representative[0]
    # central: the member with the highest dot product with its cluster's mean
    members = [50, 51, 52, 53]
    mean = x[members].sum(0)
    best = members[int(np.argmax(x[members] @ mean))]
    assert central.is_representative[best]
    assert central.is_representative.sum() == central.n_clusters


def _doc(rng: np.random.Generator, n: int = 60) -> str:
    vocab = [f"w{i}" for i in range(400)]
    return " ".join(rng.choice(vocab, size=n))


def test_minhash_and_hybrid_union():
    rng = np.random.default_rng(1)
    texts = [_doc(rng) for _ in range(40)]
    words = texts[0].split()
    words[5] = "edited"
    texts.append(" ".join(words))  # 40: a lexical near-duplicate of 0
    ids = list(range(len(texts)))
    x = np.random.default_rng(2).standard_normal((len(texts), 16)).astype(np.float32)
    x[7] = x[3] + 0.01  # 3 and 7: same embedding, different words
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    emb = find_duplicates(ids, vectors=x, texts=texts, method="embedding", threshold=0.95)
    lex = find_duplicates(ids, texts=texts, method="minhash", threshold=0.5)
    hyb = find_duplicates(ids, vectors=x, texts=texts, method="hybrid", threshold=0.95, minhash_threshold=0.5)
    assert [sorted(c) for c in emb.clusters()] == [[3, 7]]
    assert [sorted(c) for c in lex.clusters()] == [[0, 40]]
    assert sorted(sorted(c) for c in hyb.clusters()) == [[0, 40], [3, 7]]
    methods = dict(zip(zip(hyb.pair_a.tolist(), hyb.pair_b.tolist()), hyb.pair_method))
    assert methods == {(0, 40): "minhash", (3, 7): "embedding"}
    # both scores are computed for every hybrid candidate; Jaccard is exact
    row = hyb.pair_a.tolist().index(0)
    assert hyb.pair_jaccard[row] == pytest.approx(lex.pair_score[0])
    assert lex.summary["thresholds"] == {"jaccard": 0.5}
    assert hyb.summary["thresholds"] == {"cosine": 0.95, "jaccard": 0.5}


def test_outputs_hold_every_id(tmp_path):
    x, _ = _planted(60, 32)
    ids = [f"doc/{i}" for i in range(60)]
    res = find_duplicates(ids, vectors=x, threshold=0.9, keep="first")
    paths = res.write(tmp_path / "out")
    clusters = pq.read_table(paths["clusters"])
    assert clusters.column_names == ["id", "cluster_id", "cluster_size", "is_representative", "max_score"]
    assert clusters.schema.field("id").type == pa.string()
    assert sorted(clusters.column("id").to_pylist()) == sorted(ids)
    sizes = dict(zip(clusters.column("id").to_pylist(), clusters.column("cluster_size").to_pylist()))
    assert sizes["doc/0"] == 3 and sizes["doc/5"] == 1
    scores = dict(zip(clusters.column("id").to_pylist(), clusters.column("max_score").to_pylist()))
    assert scores["doc/5"] is None and scores["doc/0"] >= 0.9
    pairs = pq.read_table(paths["pairs"])
    assert pairs.column_names == ["id_a", "id_b", "score", "method", "cosine", "jaccard"]
    assert pairs.num_rows == res.summary["verified_pairs"]
    assert all(s >= 0.9 for s in pairs.column("score").to_pylist())
    assert pairs.column("jaccard").null_count == pairs.num_rows
    summary = json.loads(paths["summary"].read_text())
    assert summary["documents"] == 60 and "verify" in summary["seconds"]


def test_knn_saturation_is_reported():
    x = np.tile(np.eye(8, dtype=np.float32)[:1], (20, 1))  # 20 identical vectors
    x = np.concatenate([x, np.eye(8, dtype=np.float32)[1:]])
    res = find_duplicates(list(range(len(x))), vectors=x, threshold=0.9, index="hnsw", k=4)
    assert res.summary["knn_saturated"] >= 20
    assert any("raise k" in line for line in res.summary_lines())
    # with k-NN at k=4 the 20 copies still end in one cluster (through chains of neighbours)
    assert max(len(c) for c in res.clusters()) == 20


def test_default_thresholds(tmp_path):
    assert default_threshold("minhash") == DEFAULT_MINHASH_THRESHOLD
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    assert default_threshold("embedding", model_dir) == DEFAULT_EMBEDDING_THRESHOLD
    (model_dir / "training.json").write_text(json.dumps({"dedup_threshold": 0.87}))
    assert default_threshold("embedding", model_dir) == 0.87
    assert default_threshold("hybrid", model_dir) == 0.87
    (model_dir / "training.json").write_text(json.dumps({"dedup_threshold": 0.87, "hybrid_dedup_threshold": 0.95}))
    assert default_threshold("embedding", model_dir) == 0.87
    assert default_threshold("hybrid", model_dir) == 0.95
    with pytest.raises(ValueError, match="unknown dedup method"):
        default_threshold("fuzzy")


def test_bad_arguments():
    x, _ = _planted(10, 8)
    with pytest.raises(ValueError, match="needs embeddings"):
        find_duplicates(list(range(10)), texts=["a"] * 10, method="embedding")
    with pytest.raises(ValueError, match="needs the texts"):
        find_duplicates(list(range(10)), vectors=x, method="hybrid")
    with pytest.raises(ValueError, match="ids must be unique"):
        find_duplicates([1] * 10, vectors=x)
    with pytest.raises(ValueError, match="keep policy"):
        find_duplicates(list(range(10)), vectors=x, keep="random")


def _corpus(path, texts, ids=None):
    ids = ids or [f"doc-{i}" for i in range(len(texts))]
    pq.write_table(pa.table({"id": ids, "text": texts}), path)
    return path


_STORY = ("The quick brown fox jumps over the lazy dog near the river bank in the morning light, while "
          "the farmer counts his sheep, the baker opens the shop, children walk to school along the old "
          "stone bridge and a heron waits in the reeds for the fish that come with the tide every day.")
TEXTS = [
    _STORY,
    _STORY,
    "Quantum chromodynamics describes the strong interaction between quarks and gluons.",
    "1234 5678 9012 3456 7890 -- invoice numbers for the second quarter, all paid in full.",
    _STORY.replace("jumps", "jumped").replace("day.", "day!"),  # word 3-gram Jaccard 0.9 with _STORY
    "Zebras graze on the open savanna while lions rest in the shade of acacia trees.",
]


def test_dedup_corpus_end_to_end_with_tiny_model(tmp_path, tiny_dir):
    model_dir = tiny_dir
    corpus = _corpus(tmp_path / "c.parquet", [*TEXTS, None], [f"doc-{i}" for i in range(7)])
    res = dedup_corpus(corpus, tmp_path / "out", method="hybrid", model=model_dir, device="cpu", threshold=0.9999,
                       minhash_threshold=0.5, show_progress=False)
    clusters = pq.read_table(tmp_path / "out" / "clusters.parquet")
    assert sorted(clusters.column("id").to_pylist()) == [f"doc-{i}" for i in range(6)]  # doc-6 has no text
    assert (tmp_path / "out" / "skipped.parquet").is_file() and res.summary["skipped_rows"] == 1
    by_id = dict(zip(clusters.column("id").to_pylist(), clusters.column("cluster_id").to_pylist()))
    assert by_id["doc-0"] == by_id["doc-1"] == by_id["doc-4"]  # exact copy (cosine 1) + lexical near-copy
    assert len({by_id["doc-2"], by_id["doc-3"], by_id["doc-5"], by_id["doc-0"]}) == 4
    assert (tmp_path / "out" / "embeddings.parquet").is_file()
    assert res.summary["model_id"] == ReformerEncoder.from_pretrained(model_dir).model_id
    # from the embeddings file, the same embedding pairs
    emb = dedup_embeddings(tmp_path / "out" / "embeddings.parquet", threshold=0.9999)
    assert [0, 1] in [[emb.ids.index(i) for i in c] for c in emb.clusters()]
    hyb = dedup_embeddings(tmp_path / "out" / "embeddings.parquet", corpus=corpus, method="hybrid",
                           threshold=0.9999, minhash_threshold=0.5)
    assert sorted(map(sorted, hyb.clusters())) == sorted(map(sorted, res.clusters()))
    with pytest.raises(ValueError, match="needs the corpus texts"):
        dedup_embeddings(tmp_path / "out" / "embeddings.parquet", method="minhash")


@pytest.mark.parametrize("n", [0, 1])
def test_tiny_inputs(tmp_path, n):
    x = np.eye(4, dtype=np.float32)[:n]
    res = find_duplicates([f"d{i}" for i in range(n)], vectors=x, texts=["some text"] * n, method="hybrid",
                          threshold=0.9)
    assert res.summary["documents"] == n and res.summary["clusters"] == n and res.clusters() == []
    paths = res.write(tmp_path / "o")
    assert pq.read_table(paths["clusters"]).num_rows == n and pq.read_table(paths["pairs"]).num_rows == 0


def test_hybrid_takes_the_models_hybrid_threshold(tmp_path):
    x, _ = _planted(60)
    texts = [f"text number {i} about nothing in particular" for i in range(60)]
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    (model_dir / "training.json").write_text(json.dumps({"dedup_threshold": 0.5, "hybrid_dedup_threshold": 0.93}))
    hybrid = find_duplicates(list(range(60)), vectors=x, texts=texts, method="hybrid", model_dir=model_dir)
    embedding = find_duplicates(list(range(60)), vectors=x, method="embedding", model_dir=model_dir)
    assert hybrid.summary["thresholds"]["cosine"] == 0.93
    assert embedding.summary["thresholds"]["cosine"] == 0.5


def test_default_threshold_checks_the_model_of_the_vectors(tmp_path, tiny_dir):
    from reformer_retrieval.dedup import ThresholdModelMismatch, model_id_of
    from reformer_retrieval.encode import DEFAULT_MODEL_DIR

    bundled = model_id_of(DEFAULT_MODEL_DIR)
    assert default_threshold("embedding", model_id=bundled) == default_threshold("embedding")
    with pytest.raises(ThresholdModelMismatch, match=rf"made by model 0123456789ab.*bundled default model is {bundled}"):
        default_threshold("hybrid", model_id="0123456789ab")
    tiny = model_id_of(tiny_dir)
    assert tiny == ReformerEncoder.from_pretrained(tiny_dir).model_id  # the recorded id is the fingerprint
    assert default_threshold("embedding", tiny_dir, model_id=tiny) == DEFAULT_EMBEDDING_THRESHOLD
    with pytest.raises(ThresholdModelMismatch, match=rf"model in {tiny_dir} is {tiny}"):
        default_threshold("embedding", tiny_dir, model_id=bundled)
    assert default_threshold("minhash", model_id="0123456789ab") == DEFAULT_MINHASH_THRESHOLD
