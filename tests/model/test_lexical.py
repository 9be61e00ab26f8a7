"""The numpy lexical channel (`LexicalSketch`) against `HashedNgrams`, and the encoder's channel choice."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reformer_retrieval import ReformerConfig, ReformerEncoder
from reformer_retrieval.encode import Encoder, split_model_id
from reformer_retrieval.model import lexical as lexical_module
from reformer_retrieval.model.lexical import LexicalSketch
from reformer_retrieval.model.ngram_hash import HashedNgrams


def _weighted(module: HashedNgrams, seed: int) -> HashedNgrams:
    module.set_log_weights(torch.randn(module.buckets, generator=torch.Generator().manual_seed(seed)) * 2)
    return module


@pytest.mark.parametrize("tf", ["raw", "log", "binary"])
@pytest.mark.parametrize("projection", ["sketch", "table"])
def test_numpy_channel_equals_the_torch_module(tf: str, projection: str) -> None:
    module = _weighted(HashedNgrams(4, 4096, 64, seed=3, tf=tf, projection=projection), seed=1)
    sketch = LexicalSketch.from_module(module)
    rng = np.random.default_rng(0)
    docs = [rng.integers(4, 60, size=n) for n in (1, 3, 5, 200, 1500)]  # few symbols: repeated n-grams
    for ids in docs:
        expected = module(torch.as_tensor(ids).reshape(1, -1), torch.ones(1, len(ids), dtype=torch.bool))[0]
        got = sketch.vector(ids)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, expected.detach().numpy(), atol=2e-6, rtol=0)
    assert not sketch.vector(np.zeros(0, dtype=np.int64)).any()  # no tokens: the zero vector


def test_streaming_blocks_change_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    module = _weighted(HashedNgrams(6, 1 << 16, 128, seed=0, tf="log", projection="sketch"), seed=2)
    sketch = LexicalSketch.from_module(module)
    ids = np.random.default_rng(1).integers(4, 30, size=5000)
    whole = sketch.vector(ids)
    buckets = sketch.bucket_ids(ids)
    monkeypatch.setattr(lexical_module, "_BLOCK", 777)  # n-grams straddle the block edges
    np.testing.assert_array_equal(sketch.bucket_ids(ids), buckets)
    np.testing.assert_allclose(sketch.vector(ids), whole, atol=1e-7, rtol=0)
    ref = module.bucket_ids(torch.as_tensor(ids).reshape(1, -1))[0].numpy()
    np.testing.assert_array_equal(buckets, ref)


@pytest.fixture(scope="module")
def two_channel_model() -> ReformerEncoder:
    config = ReformerConfig(
        d_model=32, n_layers=2, n_heads=2, d_ff=64, embedding_dim=48, chunk_size=16, max_len=4096,
        axial_pos_shape=(64, 64), ngram_size=4, ngram_buckets=4096, ngram_dim=32, ngram_weight=0.8, ngram_tf="log",
        ngram_projection="sketch",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = ReformerEncoder(config).eval()
    return _weighted(model.ngrams, seed=4) and model


def test_lexical_channel_reads_the_whole_document(two_channel_model: ReformerEncoder, one_thread) -> None:
    rng = np.random.default_rng(2)
    prefix = " ".join(rng.choice(["alpha", "beta", "gamma", "delta", "eps"], size=200))  # ~1,200 characters
    a, b = prefix + " the tail of one", prefix + " another ending entirely"
    enc = Encoder(two_channel_model, device="cpu", max_tokens=256, channels="lexical")
    va, vb = enc.encode([a, b])
    assert va @ vb < 0.9999  # the texts differ only after max_tokens: still two vectors
    both = Encoder(two_channel_model, device="cpu", max_tokens=256)
    _, n_tokens, truncated = both.encode_with_info([a, b])
    assert truncated.all() and (n_tokens == 256).all()  # the contextual channel read 256 tokens and says so


def test_channels_choose_the_columns(two_channel_model: ReformerEncoder, one_thread) -> None:
    texts = ["a first little document", "a second, different one", ""]
    both = Encoder(two_channel_model, device="cpu")
    ctx = Encoder(two_channel_model, device="cpu", channels="contextual")
    lex = Encoder(two_channel_model, device="cpu", channels="lexical")
    vb, vc, vl = both.encode(texts), ctx.encode(texts), lex.encode(texts)
    assert vb.shape == (3, 48) and vc.shape == (3, 16) and vl.shape == (3, 32)
    assert (ctx.dim, lex.dim) == (16, 32)
    w = two_channel_model.config.ngram_weight
    np.testing.assert_allclose(vb[:, :16], vc * np.sqrt(1 - w), atol=1e-6)
    np.testing.assert_allclose(vb[:, 16:], vl * np.sqrt(w), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(vc[:2], axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(vl[:2], axis=1), 1.0, atol=1e-5)
    assert not vb[2].any() and not vl[2].any()  # an empty text: the zero vector
    # the model's own forward (the training path) gives the same embedding
    ids = torch.as_tensor(both.tokenizer.encode(texts[0])[0]).reshape(1, -1)
    with torch.no_grad():
        np.testing.assert_allclose(two_channel_model(ids)[0].numpy(), vb[0], atol=2e-6)
    base = two_channel_model.model_id
    assert (both.model_id, ctx.model_id, lex.model_id) == (base, f"{base}:contextual", f"{base}:lexical")
    assert split_model_id(lex.model_id) == (base, "lexical") and split_model_id(base) == (base, "both")
    with pytest.raises(ValueError, match="unknown channels"):
        split_model_id(f"{base}:ngram")


def test_lexical_channel_needs_one(tiny_dir, one_thread) -> None:
    with pytest.raises(ValueError, match="no lexical"):
        Encoder.load(tiny_dir, device="cpu", channels="lexical")
    with pytest.raises(ValueError, match="channels="):
        Encoder.load(tiny_dir, device="cpu", channels="ngram")  # type: ignore[arg-type]


def test_embeddings_file_records_the_channels(two_channel_model: ReformerEncoder, tmp_path, one_thread) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from reformer_retrieval.corpus import read_embeddings_metadata

    pq.write_table(pa.table({"id": ["a", "b"], "text": ["one text", "another text"]}), tmp_path / "c.parquet")
    for channels in ("both", "lexical"):
        enc = Encoder(two_channel_model, device="cpu", channels=channels)
        enc.encode_parquet(tmp_path / "c.parquet", tmp_path / f"{channels}.parquet", show_progress=False)
        meta = read_embeddings_metadata(tmp_path / f"{channels}.parquet")
        assert meta["channels"] == channels and meta["model_id"] == enc.model_id and meta["dim"] == enc.dim


def test_lexical_only_runs_count_their_tokens(two_channel_model: ReformerEncoder, tmp_path, one_thread) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = ["one text", "another, longer text", ""]
    pq.write_table(pa.table({"id": ["a", "b", "c"], "text": texts}), tmp_path / "c.parquet")
    enc = Encoder(two_channel_model, device="cpu", channels="lexical")
    summary = enc.encode_parquet(tmp_path / "c.parquet", tmp_path / "e.parquet", show_progress=False)
    assert summary.tokens == len("one text") + len("another, longer text")  # no Reformer pass, still the work
