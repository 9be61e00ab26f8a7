"""Corpus reading, the held-out split, the curriculum and the deterministic pair-view batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from reformer_retrieval.tokenizer import ByteTokenizer
from reformer_retrieval.train import PRESETS, BatchBuilder, CurriculumPhase, read_corpus, split_holdout
from reformer_retrieval.train.data import CorpusError, phase_at


def test_read_corpus_reads_train_shards(corpus_dir: Path) -> None:
    corpus = read_corpus(corpus_dir)
    assert len(corpus) == 56 and len(corpus.files) == 2
    assert corpus.ids[0] == "doc000" and corpus.ids[-1] == "doc055"
    assert corpus.n_bytes.tolist() == [len(t.encode("utf-8")) for t in corpus.texts]


def test_read_corpus_errors_name_file_and_column(tmp_path: Path) -> None:
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"id": ["a"], "body": ["x"]}), bad)
    with pytest.raises(CorpusError, match=r"bad\.parquet.*'text'"):
        read_corpus(bad)
    dup = tmp_path / "dup.parquet"
    pq.write_table(pa.table({"id": ["a", "b", "a"], "text": ["x", "y", "z"]}), dup)
    with pytest.raises(CorpusError, match="duplicate id 'a'"):
        read_corpus(dup)
    with pytest.raises(CorpusError, match="does not exist"):
        read_corpus(tmp_path / "missing")


def test_read_corpus_reports_skipped_rows(tmp_path: Path) -> None:
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"id": [1, 2, 3], "text": ["hello", None, ""]}), path)
    corpus = read_corpus(path)
    assert corpus.ids == ["1"] and corpus.n_bytes.tolist() == [5]
    assert [(doc_id, why) for _, doc_id, why in corpus.skipped] == [("2", "null text"), ("3", "empty text")]


def test_read_corpus_reads_json_lines_csv_globs_and_nested_fields(tmp_path: Path) -> None:
    import gzip
    import json

    rows = [{"meta": {"id": f"j{i}", "group": f"g{i % 2}"}, "body": f"text {i} ünï"} for i in range(4)]
    (tmp_path / "train-00000.jsonl.gz").write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    corpus = read_corpus(tmp_path / "train-00000.jsonl.gz", "meta.id", "body", cluster_column="meta.group")
    assert corpus.ids == ["j0", "j1", "j2", "j3"] and corpus.clusters == ["g0", "g1", "g0", "g1"]
    assert corpus.n_bytes.tolist() == [len(t.encode("utf-8")) for t in corpus.texts]
    (tmp_path / "train-00001.csv").write_text("id,text\nc0,first\nc1,\n")
    both = read_corpus(str(tmp_path / "train-*.csv"))
    assert both.ids == ["c0"] and [why for _, _, why in both.skipped] == ["empty text"]
    assert [f.name for f in read_corpus(tmp_path / "train-00001.csv").files] == ["train-00001.csv"]


def test_split_holdout_is_seeded_and_keeps_long_documents() -> None:
    n_bytes = np.array([100] * 90 + [10_000] * 10)
    train, val = split_holdout(n_bytes, 12, seed=1, n_long=5, long_bytes=5000)
    again = split_holdout(n_bytes, 12, seed=1, n_long=5, long_bytes=5000)
    assert np.array_equal(val, again[1]) and len(val) == 12
    assert (n_bytes[val] >= 5000).sum() >= 5
    assert not set(train) & set(val) and len(train) + len(val) == 100
    assert not np.array_equal(val, split_holdout(n_bytes, 12, seed=2, n_long=5, long_bytes=5000)[1])
    with pytest.raises(ValueError, match="hold out"):
        split_holdout(n_bytes, 100, seed=0)


def test_phase_at_follows_fractions() -> None:
    phases = [CurriculumPhase(0.5, 64, 4), CurriculumPhase(0.75, 128, 4), CurriculumPhase(1.0, 256, 2)]
    assert [phase_at(phases, s, 8) for s in range(8)] == [0, 0, 0, 0, 1, 1, 2, 2]


def _builder(texts: list[str], clusters: np.ndarray | None = None, **kw) -> BatchBuilder:
    n_bytes = np.array([len(t.encode()) for t in texts])
    curriculum = [
        CurriculumPhase(0.5, 64, 6, position_offset_prob=1.0),
        CurriculumPhase(1.0, 300, 4, micro_batch=2),
    ]
    return BatchBuilder(
        texts, n_bytes, np.arange(len(texts)), curriculum, 10, ByteTokenizer(max_len=1024),
        PRESETS["near_duplicate"], seed=7, max_len=1024, pad_multiple=16, clusters=clusters, **kw,
    )


def test_batches_are_a_pure_function_of_seed_and_step(corpus_dir: Path) -> None:
    texts = read_corpus(corpus_dir).texts
    b1, b2 = _builder(texts), _builder(texts)
    x, y = b1.build(3), b2.build(3)
    assert np.array_equal(x.doc_index, y.doc_index)
    assert all(np.array_equal(p, q) for p, q in zip(x.views_a + x.views_b, y.views_a + y.views_b))
    assert np.array_equal(x.offsets_a, y.offsets_a) and np.array_equal(x.offsets_b, y.offsets_b)
    z = b1.build(4)
    assert not np.array_equal(z.doc_index, x.doc_index) or z.views_a[0].tolist() != x.views_a[0].tolist()


def test_batches_follow_the_curriculum(corpus_dir: Path) -> None:
    texts = read_corpus(corpus_dir).texts
    b = _builder(texts)
    early, late = b.build(0), b.build(9)
    assert early.phase == 0 and len(early.doc_index) == 6 and len(set(early.doc_index.tolist())) == 6
    assert max(len(v) for v in early.views_a + early.views_b) <= 64
    assert late.phase == 1 and len(late.doc_index) == 4
    assert max(len(v) for v in late.views_a + late.views_b) <= 300
    assert max(len(v) for v in late.views_a) > 64  # long crops in the long phase
    assert np.array_equal(early.labels, early.doc_index)
    offsets = [b.build(s).offsets_a for s in range(6)]
    assert all(len(np.unique(o)) == 1 for o in offsets)  # one shift per view batch: no positional shortcut
    assert len({int(o[0]) for o in offsets}) > 2
    assert min(int(o[0]) for o in offsets) >= 0 and max(int(o[0]) for o in offsets) + 64 <= 1024
    assert not late.offsets_a.any() and not late.offsets_b.any()  # that phase has position_offset_prob = 0


def test_views_are_noisy_copies_of_the_same_text(corpus_dir: Path) -> None:
    texts = read_corpus(corpus_dir).texts
    batch = _builder(texts).build(9)
    tok = ByteTokenizer()

    def words(text: str) -> set[str]:
        return {w.strip(".,;:") for w in text.lower().split()}

    docs = [words(texts[d]) for d in batch.doc_index.tolist()]
    for row, (a, b) in enumerate(zip(batch.views_a, batch.views_b)):
        for view in (a, b):
            got = words(tok.decode(view.astype(np.int64)))
            overlap = [len(got & d) for d in docs]
            assert int(np.argmax(overlap)) == row  # each view is closest to its own document


def test_cluster_positives_use_cluster_labels(corpus_dir: Path) -> None:
    texts = read_corpus(corpus_dir).texts
    clusters = np.arange(len(texts)) // 2  # pairs of documents share a cluster
    batch = _builder(texts, clusters=clusters, cluster_pair_prob=1.0).build(2)
    assert np.array_equal(batch.labels, clusters[batch.doc_index])


def test_hard_negatives_are_disjoint_windows_of_a_batch_document_under_their_own_label() -> None:
    rng = np.random.default_rng(0)
    # Long documents of distinct random words: any two windows of one document share no long word run.
    vocab = [f"w{i:05d}" for i in range(20_000)]
    texts = [" ".join(rng.choice(vocab, size=400, replace=False)) for _ in range(12)]
    n_bytes = np.array([len(t.encode()) for t in texts])
    builder = BatchBuilder(
        texts, n_bytes, np.arange(len(texts)), [CurriculumPhase(1.0, 512, 8)], 10, ByteTokenizer(max_len=1024),
        PRESETS["near_duplicate"], seed=3, max_len=1024, pad_multiple=16, strength=0.0, containment_prob=0.0,
        same_doc_negatives=0.5,
    )
    batch = builder.build(1)
    docs = batch.doc_index.tolist()
    repeated = [d for d in set(docs) if docs.count(d) == 2]
    assert len(repeated) == 4 and len(set(batch.labels.tolist())) == len(docs)  # 4 hosts, every label unique
    tok = ByteTokenizer(max_len=1024)
    for d in repeated:
        s1, s2 = (i for i, x in enumerate(docs) if x == d)
        a1 = tok.decode(batch.views_a[s1].astype(np.int64)).split()
        a2 = tok.decode(batch.views_a[s2].astype(np.int64)).split()
        inner1, inner2 = set(a1[1:-1]), set(a2[1:-1])  # window edges may cut a word
        assert inner1 and inner2 and not inner1 & inner2
        assert inner1 <= set(texts[d].split()) and inner2 <= set(texts[d].split())
    # Off by default, and the same batches as before the option existed.
    plain = BatchBuilder(
        texts, n_bytes, np.arange(len(texts)), [CurriculumPhase(1.0, 512, 8)], 10, ByteTokenizer(max_len=1024),
        PRESETS["near_duplicate"], seed=3, max_len=1024, pad_multiple=16, strength=0.0,
    ).build(1)
    assert len(set(plain.doc_index.tolist())) == 8
    with pytest.raises(ValueError, match="same_doc_negatives"):
        BatchBuilder(
            texts, n_bytes, np.arange(len(texts)), [CurriculumPhase(1.0, 512, 8)], 10, ByteTokenizer(),
            PRESETS["near_duplicate"], seed=3, max_len=1024, pad_multiple=16, same_doc_negatives=0.75,
        )
