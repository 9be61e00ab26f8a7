"""The Ray engine gives the local engine's clusters and pairs, and Encoder.encode's bits (CPU).

Skipped only when the ``ray`` extra is missing (``pip install 'reformer-retrieval[ray]'``); CI installs it.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray", reason="the ray extra is not installed: pip install 'reformer-retrieval[ray]'")
pytest.importorskip("ray.data", reason="the ray extra is not installed: pip install 'reformer-retrieval[ray]'")

from reformer_retrieval.corpus import CorpusError  # noqa: E402
from reformer_retrieval.encode import Encoder  # noqa: E402
from reformer_retrieval.pipeline import StageRunner, dedup_pipeline  # noqa: E402
from reformer_retrieval.pipeline.embed import EmbedTask  # noqa: E402
from reformer_retrieval.pipeline.read import ReadTask  # noqa: E402
from reformer_retrieval.ray_engine import RayEngine, dedup_dataset, encode_dataset  # noqa: E402

_spec = importlib.util.spec_from_file_location("_pipeline_conftest", Path(__file__).parent / "pipeline" / "conftest.py")
_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_helpers)
SAMPLE, planted_texts, write_corpus = _helpers.SAMPLE, _helpers.planted_texts, _helpers.write_corpus

pytestmark = pytest.mark.slow
SHORT = {"max_tokens": 64}  # tiny-model encoding of short prefixes keeps the tests fast on 2 cores


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray_corpora")
    ids, texts = planted_texts(20_000, seed=11)
    big = write_corpus(root / "big.parquet", ids, texts, row_group_size=5_000)
    ids, texts = planted_texts(1_500, seed=12)
    small = write_corpus(root / "small.parquet", ids, texts, row_group_size=500)
    return {"big": big, "small": small}


def _same_outputs(a: Path, b: Path) -> None:
    for name in ("clusters.parquet", "pairs.parquet"):
        assert pq.read_table(a / name).equals(pq.read_table(b / name)), name


def test_minhash_ray_equals_local(ray_cluster, corpora, tmp_path):
    for name, source, kwargs in (("sample", SAMPLE, {}), ("big", corpora["big"], {"threshold": 0.5})):
        local = dedup_pipeline(source, tmp_path / f"{name}-local", method="minhash", shard_rows=5_000, **kwargs)
        remote = dedup_pipeline(source, tmp_path / f"{name}-ray", method="minhash", shard_rows=5_000,
                                engine=RayEngine(), **kwargs)
        _same_outputs(tmp_path / f"{name}-local", tmp_path / f"{name}-ray")
        assert remote.summary["engine"] == "ray" and local.summary["engine"] == "local"
        assert remote.summary["duplicate_clusters"] > 20
    assert pq.read_table(tmp_path / "big-ray" / "clusters.parquet").num_rows == 20_000
    # large-star / small-star rounds on Ray: the same clusters as SciPy's single task
    dedup_pipeline(corpora["big"], tmp_path / "big-rounds", method="minhash", shard_rows=5_000, threshold=0.5,
                   engine=RayEngine(), components_mode="rounds")
    _same_outputs(tmp_path / "big-local", tmp_path / "big-rounds")


def test_embedding_and_hybrid_ray_equal_local(ray_cluster, corpora, tiny_dir, tmp_path):
    common = {"threshold": 0.9995, "minhash_threshold": 0.5, "model": tiny_dir, "device": "cpu",
              "encoder_options": SHORT, "shard_rows": 500}
    for name, source in (("sample", SAMPLE), ("small", corpora["small"])):
        for method, index in (("embedding", "flat"), ("embedding", "lsh"), ("hybrid", "flat")):
            runs = {}
            for engine in ("local", "ray"):  # one work dir per engine: each encodes the corpus once
                runs[engine] = tmp_path / f"{name}-{method}-{index}-{engine}"
                res = dedup_pipeline(source, runs[engine], method=method, index=index,
                                     work_dir=tmp_path / f"work-{name}-{engine}",
                                     engine=RayEngine() if engine == "ray" else None, **common)
                assert res.summary["engine"] == engine and res.summary["duplicate_clusters"] > 0
            _same_outputs(runs["local"], runs["ray"])
        embed = [pq.read_table(tmp_path / f"work-{name}-{e}" / "embed" / "part-00000.parquet") for e in ("local", "ray")]
        assert embed[0].equals(embed[1])  # the vectors themselves, bit for bit


def test_encode_dataset_equals_encoder_bit_for_bit(ray_cluster, tiny_dir):
    texts = [*pq.read_table(SAMPLE).column("text").to_pylist()[:40], ""]
    ds = ray.data.from_items([{"id": i, "text": t} for i, t in enumerate(texts)], override_num_blocks=1)
    out = encode_dataset(ds, model=tiny_dir, batch_size=16, concurrency=1, **SHORT).take_all()
    assert [r["id"] for r in out] == list(range(len(texts)))
    assert out[-1]["embedding"] is None and out[-1]["n_tokens"] == 0  # an empty text: no vector
    got = np.stack([r["embedding"] for r in out[:-1]]).astype(np.float32)
    encoder = Encoder.load(tiny_dir, device="cpu", **SHORT)
    batches = [texts[s:s + 16] for s in range(0, len(texts), 16)]  # the rows of each Ray batch
    want = np.concatenate([encoder.encode([t for t in b if t]) for b in batches])
    assert np.array_equal(got, want)


def test_dedup_dataset(ray_cluster, tmp_path):
    ids, texts = planted_texts(600, seed=3)
    ds = ray.data.from_items([{"doc": i, "body": t} for i, t in zip(ids, texts)], override_num_blocks=4)
    res = dedup_dataset(ds, tmp_path / "o", method="minhash", threshold=0.5, id_column="doc", text_column="body")
    assert sorted(res.ids) == ids and res.summary["engine"] == "ray"
    with pytest.raises(ValueError, match="no column 'id'"):
        dedup_dataset(ds, tmp_path / "o2")


class _DyingEmbed(EmbedTask):
    """Kills its own worker process (os._exit) the first time it reaches shard 1."""

    def run(self, index):
        marker = Path(self.read_dir).parent / "died-once"
        if index == 1 and not marker.exists():
            marker.write_text("")
            os._exit(1)
        return super().run(index)


def test_a_killed_embed_actor_is_replaced_and_every_row_written_once(ray_cluster, corpora, tiny_dir, tmp_path):
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    runner = StageRunner(tmp_path / "stages", RayEngine(concurrency=1))
    read = runner.run(ReadTask(corpora["small"], shard_rows=500))
    model_id = Encoder.load(tiny_dir, device="cpu").model_id
    embed = runner.run(_DyingEmbed(read.directory, read.shards, tiny_dir, "cpu", SHORT, model_id), [read])
    assert (tmp_path / "stages" / "died-once").is_file()  # the actor did die mid-stage
    rows = np.concatenate([pq.read_table(p, columns=["row"]).column("row").to_numpy() for p in embed.paths])
    assert np.array_equal(np.sort(rows), np.arange(1_500)) and embed.rows == 1_500


def test_a_shard_error_on_a_worker_is_one_line_naming_the_file(ray_cluster, tmp_path):
    ids, texts = planted_texts(200, seed=9)
    corpus = write_corpus(tmp_path / "c.parquet", ids, texts, row_group_size=100)
    task = ReadTask(corpus, shard_rows=100)  # planned from the footer: 2 row groups of 100
    write_corpus(corpus, ids[:150], texts[:150], row_group_size=75)  # the file changes under the run
    with pytest.raises(CorpusError) as info:
        StageRunner(tmp_path / "stages", RayEngine()).run(task)
    message = str(info.value)
    assert "\n" not in message and "c.parquet" in message and message.startswith("stage read, shard 0: ")


def test_embeddings_dataset_ray_equals_local(ray_cluster, tmp_path):
    """dedup_pipeline(embeddings=...): vectors taken from an embeddings file by id give the same outputs on Ray."""
    from reformer_retrieval.corpus import EmbeddingWriter

    n, dim = 1_200, 32
    rng = np.random.default_rng(4)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    x[1::6] = x[0::6][: len(x[1::6])] + 0.2 * rng.standard_normal((len(x[1::6]), dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = [f"v{i:05d}" for i in range(n)]
    corpus = write_corpus(tmp_path / "c.parquet", ids, [f"t{i}" for i in range(n)], row_group_size=300)
    order = rng.permutation(n)
    with EmbeddingWriter(tmp_path / "e.parquet", dim=dim, model_id="m-ray-test") as w:
        w.write([ids[i] for i in order], x[order], np.ones(n, np.int32), np.zeros(n, bool))
    for index in ("flat", "lsh"):
        for engine in ("local", "ray"):
            res = dedup_pipeline(corpus, tmp_path / f"{index}-{engine}", method="embedding", index=index,
                                 embeddings=tmp_path / "e.parquet", threshold=0.9, shard_rows=300,
                                 engine=RayEngine() if engine == "ray" else None)
            assert res.summary["engine"] == engine and res.summary["duplicate_clusters"] >= 150
        _same_outputs(tmp_path / f"{index}-local", tmp_path / f"{index}-ray")
