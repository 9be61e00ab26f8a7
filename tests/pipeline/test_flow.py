"""The staged dedup: same clusters as the in-memory path, resume after a kill, inputs, bad input."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from reformer_retrieval.corpus import CorpusError
from reformer_retrieval.dedup import dedup_corpus
from reformer_retrieval.pipeline import dedup_pipeline
from reformer_retrieval.pipeline.sketch import SketchTask

_spec = importlib.util.spec_from_file_location("_pipeline_conftest", Path(__file__).with_name("conftest.py"))
_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_helpers)
SAMPLE, planted_texts, write_corpus = _helpers.SAMPLE, _helpers.planted_texts, _helpers.write_corpus


def _tables(out):
    return pq.read_table(out / "clusters.parquet"), pq.read_table(out / "pairs.parquet")


def test_sample_minhash_equals_the_all_pairs_path(tmp_path):
    new = dedup_pipeline(SAMPLE, tmp_path / "new", method="minhash")
    old = dedup_corpus(SAMPLE, tmp_path / "old", method="minhash", show_progress=False)
    (nc, npairs), (oc, opairs) = _tables(tmp_path / "new"), _tables(tmp_path / "old")
    assert nc.equals(oc)  # same partition, cluster numbers, representatives and max scores
    assert npairs.equals(opairs)  # on the sample every verified pair is also a star or path edge
    assert new.summary["engine"] == "local" and new.summary["edges"] == "star+path"
    assert set(new.summary["seconds"]) >= {
        "read", "sketch", "bands", "candidates", "verify", "components"}
    assert old.summary["verified_pairs"] == new.summary["verified_pairs"]


@pytest.mark.slow
def test_sample_embedding_and_hybrid_equal_the_in_memory_path(tmp_path, tiny_dir, one_thread):
    for method in ("embedding", "hybrid"):  # each path encodes the sample once (work dir / --resume reuse it)
        kwargs = {"threshold": 0.9995, "minhash_threshold": 0.2} if method == "hybrid" else {"threshold": 0.9995}
        dedup_pipeline(SAMPLE, tmp_path / "new", method=method, model=tiny_dir, device="cpu", **kwargs)
        dedup_corpus(SAMPLE, tmp_path / "old", method=method, model=tiny_dir, device="cpu", show_progress=False,
                     resume=True, **kwargs)
        (nc, npairs), (oc, opairs) = _tables(tmp_path / "new"), _tables(tmp_path / "old")
        assert nc.equals(oc), method
        assert npairs.select(["id_a", "id_b", "method"]).equals(opairs.select(["id_a", "id_b", "method"])), method


def test_generated_corpus_in_shards_matches_and_reports(tmp_path):
    ids, texts = planted_texts(3000, seed=4)
    texts[5] = ""  # skipped, reported
    corpus = write_corpus(tmp_path / "c.parquet", ids, texts, row_group_size=500)
    res = dedup_pipeline(corpus, tmp_path / "new", method="minhash", threshold=0.5, shard_rows=500)
    old = dedup_corpus(corpus, tmp_path / "old", method="minhash", threshold=0.5, show_progress=False)
    assert _tables(tmp_path / "new")[0].equals(_tables(tmp_path / "old")[0])
    assert res.summary["skipped_rows"] == 1 and len(res.ids) == 2999
    skipped = pq.read_table(tmp_path / "new" / "skipped.parquet").to_pylist()
    assert skipped == [{"id": "doc-000005", "reason": "empty text", "file": str(corpus), "row": 5}]
    assert len(old.clusters()) == len(res.clusters()) > 200
    summary = json.loads((tmp_path / "new" / "summary.json").read_text())
    assert summary["oversized_buckets"]["count"] == 0 and summary["bucket_cap"] == 10_000


def test_oversized_buckets_are_reported_not_dropped(tmp_path):
    ids, texts = planted_texts(300, seed=1)
    texts = [*texts[:50], *(["the same boilerplate page"] * 30), *texts[80:]]
    corpus = write_corpus(tmp_path / "c.parquet", ids, texts)
    res = dedup_pipeline(corpus, tmp_path / "o", method="minhash", threshold=0.5, bucket_cap=20)
    over = res.summary["oversized_buckets"]
    assert over["count"] == res.summary["minhash"]["bands"]  # the 30 copies share every band
    assert over["largest"][0]["size"] == 30 and over["largest"][0]["smallest_row"] == 50
    assert max(len(c) for c in res.clusters()) == 30  # still clustered


def test_directory_hive_partitions_and_file_uri(tmp_path):
    ids, texts = planted_texts(400, seed=2)
    for part in range(2):
        write_corpus(tmp_path / "corpus" / f"lang=x{part}" / "data.parquet", ids[part::2], texts[part::2])
    (tmp_path / "corpus" / "_SUCCESS").write_text("")
    one = dedup_pipeline(tmp_path / "corpus", tmp_path / "o1", method="minhash", threshold=0.5)
    two = dedup_pipeline(f"file://{tmp_path / 'corpus'}", tmp_path / "o2", method="minhash", threshold=0.5)
    assert len(one.ids) == 400 and one.ids == two.ids
    assert np.array_equal(one.cluster_id, two.cluster_id)


def test_bad_input_is_one_line_naming_the_file(tmp_path):
    bad = write_corpus(tmp_path / "bad.parquet", ["a"], ["x"])
    with pytest.raises(CorpusError, match=r"bad\.parquet: no id column 'doc'"):
        dedup_pipeline(bad, tmp_path / "o", id_column="doc")
    (tmp_path / "shards").mkdir()
    write_corpus(tmp_path / "shards" / "a.parquet", ["a", "b"], ["x y", "y z"])
    (tmp_path / "shards" / "b.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(CorpusError, match=r"b\.parquet: not a readable Parquet file"):
        dedup_pipeline(tmp_path / "shards", tmp_path / "o")
    dup = write_corpus(tmp_path / "dup.parquet", ["a", "b", "a"], ["x y", "y z", "z w"])
    with pytest.raises(CorpusError, match=r"duplicate id 'a': corpus rows 0 and 2"):
        dedup_pipeline(dup, tmp_path / "o3")


class _Killed(Exception):
    pass


def test_rerun_after_a_failure_mid_stage_resumes_at_the_shard(tmp_path, monkeypatch):
    ids, texts = planted_texts(1000, seed=5)
    corpus = write_corpus(tmp_path / "c.parquet", ids, texts, row_group_size=100)
    calls: list[int] = []
    real = SketchTask.run

    def failing(self, index):
        if len(calls) == 4:
            raise _Killed
        calls.append(index)
        return real(self, index)

    monkeypatch.setattr(SketchTask, "run", failing)
    with pytest.raises(_Killed):
        dedup_pipeline(corpus, tmp_path / "o", method="minhash", threshold=0.5, shard_rows=100)
    sketch_dir = tmp_path / "o" / "stages" / "sketch"
    assert sorted(p.name for p in sketch_dir.glob("part-*.parquet")) == [f"part-0000{i}.parquet" for i in range(4)]
    monkeypatch.setattr(SketchTask, "run", lambda self, index: (calls.append(index), real(self, index))[1])
    res = dedup_pipeline(corpus, tmp_path / "o", method="minhash", threshold=0.5, shard_rows=100)
    assert calls == list(range(10))  # each shard computed exactly once over both runs
    rows = pq.ParquetDataset(sketch_dir).read(columns=["row"]).column("row").to_numpy()
    assert np.array_equal(np.sort(rows), np.arange(1000))
    assert sorted(res.ids) == ids
    # a third run finds every stage complete; other settings clear the stages they change
    again = dedup_pipeline(corpus, tmp_path / "o", method="minhash", threshold=0.5, shard_rows=100)
    assert calls == list(range(10)) and np.array_equal(again.cluster_id, res.cluster_id)
    dedup_pipeline(corpus, tmp_path / "o", method="minhash", threshold=0.5, shard_rows=100, num_perm=64)
    assert calls[10:] == list(range(10))


def test_rerun_after_sigkill_mid_stage(tmp_path):
    """A process killed (SIGKILL) inside the sketch stage leaves complete shards only; a rerun finishes."""
    ids, texts = planted_texts(600, seed=6)
    corpus = write_corpus(tmp_path / "c.parquet", ids, texts, row_group_size=100)
    script = textwrap.dedent(f"""
        import os, signal
        from reformer_retrieval.pipeline import dedup_pipeline
        from reformer_retrieval.pipeline.sketch import SketchTask
        real = SketchTask.run
        def run(self, index):
            if index == 3:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(self, index)
        SketchTask.run = run
        dedup_pipeline({str(corpus)!r}, {str(tmp_path / 'o')!r}, method="minhash", threshold=0.5, shard_rows=100)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=tmp_path)
    assert proc.returncode == -9, proc.stderr[-2000:]
    sketch_dir = tmp_path / "o" / "stages" / "sketch"
    assert len(list(sketch_dir.glob("part-*.parquet"))) == 3 and not (sketch_dir / "_SUCCESS.json").exists()
    res = dedup_pipeline(corpus, tmp_path / "o", method="minhash", threshold=0.5, shard_rows=100)
    whole = dedup_pipeline(corpus, tmp_path / "fresh", method="minhash", threshold=0.5, shard_rows=100)
    assert res.ids == whole.ids == ids and np.array_equal(res.cluster_id, whole.cluster_id)
    assert pa.concat_tables([pq.read_table(p) for p in sorted(sketch_dir.glob("part-*.parquet"))]).num_rows == 600


def test_star_edges_alone_verify_a_subset_of_star_and_path(tmp_path):
    ids, texts = planted_texts(1500, seed=8)
    corpus = write_corpus(tmp_path / "c.parquet", ids, texts)
    star = dedup_pipeline(corpus, tmp_path / "s", method="minhash", threshold=0.5, edges="star",
                          work_dir=tmp_path / "w")
    both = dedup_pipeline(corpus, tmp_path / "b", method="minhash", threshold=0.5, work_dir=tmp_path / "w")
    pairs = [set(zip(r.pair_a.tolist(), r.pair_b.tolist())) for r in (star, both)]
    assert pairs[0] < pairs[1] and star.summary["edges"] == "star"
    with pytest.raises(ValueError, match="edges must be one of"):
        dedup_pipeline(corpus, tmp_path / "x", method="minhash", edges="all")


def test_json_lines_and_csv_corpora_give_the_parquet_clusters(tmp_path):
    import gzip

    ids, texts = planted_texts(800, seed=10)
    parquet = write_corpus(tmp_path / "c.parquet", ids, texts)
    (tmp_path / "jl").mkdir()
    with gzip.open(tmp_path / "jl" / "a.jsonl.gz", "wt") as fh:
        for i, t in zip(ids[:500], texts[:500]):
            fh.write(json.dumps({"meta": {"id": i}, "body": t}) + "\n")
    with open(tmp_path / "jl" / "b.csv", "w") as fh:
        fh.write("meta.id,body\n" + "".join(f"{i},{t}\n" for i, t in zip(ids[500:], texts[500:])))
    want = dedup_pipeline(parquet, tmp_path / "p", method="minhash", threshold=0.5)
    got = dedup_pipeline(tmp_path / "jl", tmp_path / "j", method="minhash", threshold=0.5, id_column="meta.id",
                         text_column="body")
    assert got.ids == want.ids and np.array_equal(got.cluster_id, want.cluster_id)
    with pytest.raises(CorpusError, match=r"a\.jsonl\.gz: no text column 'text'"):
        dedup_pipeline(tmp_path / "jl", tmp_path / "x", id_column="meta.id")


@pytest.mark.parametrize("texts", [[], ["", None], ["just one document"]])
def test_tiny_corpora(tmp_path, texts):
    corpus = tmp_path / "c.parquet"
    pq.write_table(pa.table({"id": pa.array([f"d{i}" for i in range(len(texts))], pa.string()),
                             "text": pa.array(texts, pa.string())}), corpus)
    for mode in ("single", "rounds"):
        res = dedup_pipeline(corpus, tmp_path / mode, method="minhash", components_mode=mode)
        n = int(texts == ["just one document"])
        assert res.summary["documents"] == res.summary["clusters"] == n
        assert res.summary["skipped_rows"] == len(texts) - n
        assert pq.read_table(tmp_path / mode / "clusters.parquet").num_rows == n
        assert pq.read_table(tmp_path / mode / "pairs.parquet").num_rows == 0


def test_a_rewritten_corpus_file_is_read_again(tmp_path):
    ids, texts = planted_texts(300, seed=13)
    corpus = write_corpus(tmp_path / "c.parquet", ids, texts)
    first = dedup_pipeline(corpus, tmp_path / "o", method="minhash", threshold=0.5)
    texts = [t.upper() if i == 0 else t for i, t in enumerate(texts)]
    texts[1] = "a different document"  # same row count, other content
    write_corpus(corpus, ids, texts)
    second = dedup_pipeline(corpus, tmp_path / "o", method="minhash", threshold=0.5)
    assert first.summary["clusters"] != second.summary["clusters"] or not np.array_equal(
        first.cluster_id, second.cluster_id)
    read = pq.read_table(tmp_path / "o" / "stages" / "read" / "part-00000.parquet")
    assert read.column("text")[1].as_py() == "a different document"


def test_embedding_dedup_loads_the_encoder_once(tmp_path, tiny_dir, monkeypatch):
    """The driver reads the model id from the model directory; only the embed stage builds the encoder."""
    from reformer_retrieval.encode import Encoder, model_identity

    loads = []
    real = Encoder.load.__func__

    def counting_load(cls, *args, **kwargs):
        loads.append(args)
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(Encoder, "load", classmethod(counting_load))
    ids, texts = planted_texts(40, seed=4)
    res = dedup_pipeline(write_corpus(tmp_path / "c.parquet", ids, texts), tmp_path / "o", method="embedding",
                         threshold=0.9995, model=tiny_dir, device="cpu", encoder_options={"max_tokens": 64})
    assert len(loads) == 1 and res.summary["model_id"] == model_identity(tiny_dir)[1]
