"""The hashed n-gram channel: its hash, its idf weights, and its place in the encoder's embedding."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from reformer_retrieval import ByteTokenizer, ReformerConfig, ReformerEncoder
from reformer_retrieval.model.ngram_hash import HashedNgrams, idf_log_weights


@pytest.fixture
def ngram_config(tiny_config: ReformerConfig) -> ReformerConfig:
    return tiny_config.replace(embedding_dim=48, ngram_size=3, ngram_buckets=512, ngram_dim=32, ngram_weight=0.75)


def test_bucket_ids_depend_on_the_last_n_tokens_only() -> None:
    ngrams = HashedNgrams(3, 1000, 8, seed=0)
    a = torch.tensor([[5, 6, 7, 8, 9, 10]])
    b = torch.tensor([[50, 60, 7, 8, 9, 10]])
    ha, hb = ngrams.bucket_ids(a), ngrams.bucket_ids(b)
    assert ha.shape == a.shape and int(ha.min()) >= 0 and int(ha.max()) < 1000
    assert torch.equal(ha[0, 4:], hb[0, 4:])  # same three tokens ending at positions 4 and 5
    assert not torch.equal(ha[0, :4], hb[0, :4])
    # the n-gram ending at position 0 reads two pad ids before it
    pad = torch.tensor([[0, 0, 5]])
    assert int(ngrams.bucket_ids(pad)[0, 2]) == int(ha[0, 0])


def test_hash_is_seeded_and_spreads_ngrams() -> None:
    ids = torch.randint(4, 260, (1, 4000), generator=torch.Generator().manual_seed(1))
    one, same, other = HashedNgrams(4, 4096, 8, 0), HashedNgrams(4, 4096, 8, 0), HashedNgrams(4, 4096, 8, 1)
    assert torch.equal(one.bucket_ids(ids), same.bucket_ids(ids))
    assert not torch.equal(one.bucket_ids(ids), other.bucket_ids(ids))
    # 4,000 distinct random 4-grams fill a good part of 4,096 buckets (a weak hash would pile them up)
    assert len(torch.unique(one.bucket_ids(ids))) > 2000


def test_idf_log_weights_favour_rare_ngrams() -> None:
    ngrams = HashedNgrams(2, 256, 4, seed=0)
    common = np.array([10, 11] * 5)
    docs = [np.concatenate([common, np.array([20 + i, 30 + i])]) for i in range(9)]
    weights = idf_log_weights(ngrams, docs, power=2.0)
    buckets = lambda seq: ngrams.bucket_ids(torch.as_tensor(seq).reshape(1, -1))[0]  # noqa: E731
    w_common = weights[int(buckets([10, 11])[1])]
    w_rare = weights[int(buckets([20, 30])[1])]
    assert w_rare > w_common
    assert w_rare == pytest.approx(2 * math.log(math.log(10 / 2) + 1.0), rel=1e-6)  # in 1 of 9 documents
    assert w_common == pytest.approx(2 * math.log(math.log(10 / 10) + 1.0))  # in every document: idf 1
    assert np.allclose(idf_log_weights(ngrams, docs, power=0.0), 0.0)
    with pytest.raises(ValueError, match="non-empty"):
        idf_log_weights(ngrams, [np.array([], dtype=np.int64)])


def test_encoder_embedding_is_both_channels_weighted(ngram_config: ReformerConfig) -> None:
    torch.manual_seed(0)
    model = ReformerEncoder(ngram_config).eval()
    model.ngrams.set_log_weights(torch.randn(512, generator=torch.Generator().manual_seed(5)) * 3)
    batch = ByteTokenizer()(["the same words in the same order", "entirely other text, nothing shared", ""])
    with torch.no_grad():
        emb = model(batch["input_ids"], batch["attention_mask"])
    assert emb.shape == (3, 48)
    assert torch.allclose(emb[:2].norm(dim=1), torch.ones(2), atol=1e-5)
    assert torch.equal(emb[2], torch.zeros(48))  # no real token: the zero vector, not NaN
    context, lexical = emb[:, :16], emb[:, 16:]
    assert torch.allclose(context[:2].norm(dim=1) ** 2, torch.full((2,), 0.25), atol=1e-5)
    assert torch.allclose(lexical[:2].norm(dim=1) ** 2, torch.full((2,), 0.75), atol=1e-5)
    # the lexical channel is the log-weighted bag of n-gram vectors of the real tokens
    ids = batch["input_ids"][:1, : int(batch["attention_mask"][0].sum())]
    rows = model.ngrams.bucket_ids(ids)[0]
    w = torch.exp(model.ngrams.log_weight[rows])
    bag = (model.ngrams.embedding.weight[rows] * w[:, None]).sum(0)
    assert torch.allclose(lexical[0], math.sqrt(0.75) * bag / bag.norm(), atol=1e-5)


def test_lexical_channel_ignores_padding_and_follows_weights(ngram_config: ReformerConfig) -> None:
    torch.manual_seed(0)
    model = ReformerEncoder(ngram_config).eval()
    tok = ByteTokenizer()
    alone = tok(["a short document"])
    padded = tok(["a short document", "a much longer document that forces padding on the first row"])
    with torch.no_grad():
        e1 = model(alone["input_ids"], alone["attention_mask"])[0]
        e2 = model(padded["input_ids"], padded["attention_mask"])[0]
        assert torch.allclose(e1, e2, atol=1e-5)
        model.ngrams.set_log_weights(torch.randn(512, generator=torch.Generator().manual_seed(3)))
        e3 = model(alone["input_ids"], alone["attention_mask"])[0]
    assert not torch.allclose(e1[16:], e3[16:], atol=1e-3)
    assert torch.allclose(e1[:16], e3[:16])  # the contextual channel does not use the n-gram weights
    with pytest.raises(ValueError, match="log-weights"):
        model.ngrams.set_log_weights(np.zeros(3))
    model.ngrams.set_log_weights(torch.zeros(512, requires_grad=True))  # a tensor that needs grad is fine
    assert float(model.ngrams.log_weight.detach().abs().sum()) == 0.0


def test_a_document_with_very_low_weights_keeps_its_lexical_channel(ngram_config: ReformerConfig) -> None:
    model = ReformerEncoder(ngram_config).eval()
    model.ngrams.set_log_weights(torch.full((512,), -2e4))
    batch = ByteTokenizer()(["some real text"])
    with torch.no_grad():
        emb = model(batch["input_ids"], batch["attention_mask"])[0]
    assert float(emb[16:].norm() ** 2) == pytest.approx(0.75, abs=1e-5)


def test_windows_keep_each_channel_share(ngram_config: ReformerConfig, tmp_path) -> None:
    from reformer_retrieval.checkpoint import save_model
    from reformer_retrieval.encode import Encoder

    torch.manual_seed(0)
    model = ReformerEncoder(ngram_config.replace(max_len=1024, axial_pos_shape=(32, 32)))
    save_model(model, tmp_path / "m")
    text = " ".join(f"word{i % 97} other{i % 13}" for i in range(600))  # about 8,000 byte tokens
    enc = Encoder.load(tmp_path / "m", device="cpu", max_tokens=512, long_docs="window")
    emb = enc.encode([text])[0]
    assert np.linalg.norm(emb[:16]) ** 2 == pytest.approx(0.25, abs=1e-5)
    assert np.linalg.norm(emb[16:]) ** 2 == pytest.approx(0.75, abs=1e-5)


def test_ngram_channel_gets_gradients(ngram_config: ReformerConfig) -> None:
    torch.manual_seed(0)
    model = ReformerEncoder(ngram_config).train()
    batch = ByteTokenizer()(["one document here", "another document there"])
    emb = model(batch["input_ids"], batch["attention_mask"])
    (emb[0] @ emb[1]).backward()
    assert model.ngrams.embedding.weight.grad.abs().sum() > 0
    assert model.ngrams.log_weight.grad.abs().sum() > 0


def test_config_checks_and_keeps_old_model_ids(tiny_config: ReformerConfig) -> None:
    assert "ngram_size" not in tiny_config.to_dict()  # off: old configs (and their model ids) are unchanged
    on = tiny_config.replace(embedding_dim=48, ngram_size=5, ngram_dim=32)
    assert on.to_dict()["ngram_dim"] == 32 and on.context_dim == 16 and tiny_config.context_dim == 16
    assert ReformerConfig.from_json(on.to_json()) == on
    with pytest.raises(ValueError, match="ngram_dim"):
        tiny_config.replace(ngram_size=5, ngram_dim=16)
    with pytest.raises(ValueError, match="ngram_weight"):
        on.replace(ngram_weight=1.0)
    with pytest.raises(ValueError, match="ngram_size"):
        tiny_config.replace(ngram_size=-1)
    with pytest.raises(ValueError, match=r"ngram_dim.*only with ngram_size"):
        tiny_config.replace(ngram_dim=8)  # would vanish from to_dict and the model id
    with pytest.raises(ValueError, match="ngram_weight"):
        on.replace(ngram_weight="0.5")


@torch.no_grad()
def _naive_weights(ngrams: HashedNgrams, ids: torch.Tensor) -> dict[int, float]:
    """Every bucket of one unpadded row and its weight tf * exp(log-weight), counted one position at a time."""
    counts: dict[int, int] = {}
    for b in ngrams.bucket_ids(ids.reshape(1, -1))[0].tolist():
        counts[b] = counts.get(b, 0) + 1
    tfs = {b: {"raw": k, "log": 1.0 + math.log(k), "binary": 1.0}[ngrams.tf] for b, k in counts.items()}
    return {b: tf * math.exp(float(ngrams.log_weight[b])) for b, tf in tfs.items()}


@torch.no_grad()
def _naive_channel(ngrams: HashedNgrams, ids: torch.Tensor) -> torch.Tensor:
    """The channel of one unpadded row, written out bucket by bucket (the reference for every tf/projection)."""
    bag = torch.zeros(ngrams.dim, dtype=torch.float64)
    for b, weight in _naive_weights(ngrams, ids).items():
        if ngrams.projection == "table":
            bag += weight * ngrams.embedding.weight[b].double()
        else:
            coordinate, sign = ngrams.sketch_coordinates(torch.tensor([b]))
            bag[int(coordinate)] += weight * float(sign)
    return (bag / bag.norm()).float()


@pytest.mark.parametrize("projection", ["table", "sketch"])
@pytest.mark.parametrize("tf", ["raw", "log", "binary"])
def test_every_tf_and_projection_matches_the_bucket_by_bucket_sum(tf: str, projection: str) -> None:
    torch.manual_seed(0)
    ngrams = HashedNgrams(3, 64, 16, seed=2, tf=tf, projection=projection)  # few buckets: many repeats
    ngrams.set_log_weights(torch.randn(64, generator=torch.Generator().manual_seed(1)))
    batch = ByteTokenizer()(["abcabcabc abc xyz abc", "a longer second row, so the first one is padded"])
    with torch.no_grad():
        out = ngrams(batch["input_ids"], batch["attention_mask"].bool())
    for row in range(2):
        ids = batch["input_ids"][row, : int(batch["attention_mask"][row].sum())]
        assert torch.allclose(out[row], _naive_channel(ngrams, ids), atol=1e-5), (tf, projection, row)


@pytest.mark.parametrize("tf", ["raw", "log", "binary"])
def test_weighted_buckets_are_the_rows_distinct_buckets_and_weights(tf: str) -> None:
    ngrams = HashedNgrams(3, 64, 16, seed=2, tf=tf, projection="sketch")
    ngrams.set_log_weights(torch.randn(64, generator=torch.Generator().manual_seed(1)))
    batch = ByteTokenizer()(["abcabcabc abc xyz abc", "a longer second row, so the first one is padded"])
    mask = batch["attention_mask"].bool()
    with torch.no_grad():
        rows, buckets, weights = ngrams.weighted_buckets(ngrams.bucket_ids(batch["input_ids"]), mask)
    assert torch.equal(rows, torch.sort(rows, stable=True).values)
    for row in range(2):
        expected = _naive_weights(ngrams, batch["input_ids"][row, : int(mask[row].sum())])
        got = dict(zip(buckets[rows == row].tolist(), weights[rows == row].double().tolist()))
        assert sorted(got) == sorted(expected), (tf, row)
        scale = max(math.exp(float(ngrams.log_weight.detach()[b])) for b in expected)  # each row's largest exp(log-weight)
        assert all(math.isclose(got[b], expected[b] / scale, rel_tol=1e-5) for b in expected), (tf, row)


def test_log_and_binary_tf_damp_repetition() -> None:
    tok = ByteTokenizer()
    base, repeated = "the unique part of this document", "the unique part of this document" + " boilerplate" * 40
    other = "boilerplate " * 41
    sims = {}
    for tf in ("raw", "log", "binary"):
        ngrams = HashedNgrams(4, 1 << 16, 512, seed=0, tf=tf, projection="sketch")
        batch = tok([base, repeated, other])
        with torch.no_grad():
            e = ngrams(batch["input_ids"], batch["attention_mask"].bool())
        sims[tf] = (float(e[0] @ e[1]), float(e[1] @ e[2]))
    # repeated boilerplate dominates raw counts; counted once (binary) or logarithmically it weighs far less
    assert sims["raw"][0] < sims["log"][0] < sims["binary"][0]
    assert sims["raw"][1] > sims["log"][1] > sims["binary"][1]


def test_sketch_has_no_table_and_estimates_the_weighted_cosine() -> None:
    sketch = HashedNgrams(4, 1 << 20, 2048, seed=0, tf="binary", projection="sketch")
    assert sketch.embedding is None and "embedding.weight" not in sketch.state_dict()
    assert set(sketch.state_dict()) == {"multipliers", "sketch_multipliers", "log_weight"}
    coordinate, sign = sketch.sketch_coordinates(torch.arange(1 << 16))
    assert int(coordinate.min()) == 0 and int(coordinate.max()) == 2047 and set(sign.tolist()) == {-1.0, 1.0}
    assert abs(float(sign.mean())) < 0.02 and len(torch.unique(coordinate)) == 2048  # spread evenly
    # two random documents sharing about half their 4-grams: the sketch's cosine is near the exact set cosine
    gen = torch.Generator().manual_seed(0)
    shared = torch.randint(4, 260, (3000,), generator=gen)
    a = torch.cat([shared, torch.randint(4, 260, (3000,), generator=gen)]).reshape(1, -1)
    b = torch.cat([shared, torch.randint(4, 260, (3000,), generator=gen)]).reshape(1, -1)
    with torch.no_grad():
        ea, eb = (sketch(x, torch.ones_like(x, dtype=torch.bool)) for x in (a, b))
    sa, sb = (set(sketch.bucket_ids(x)[0].tolist()) for x in (a, b))
    exact = len(sa & sb) / math.sqrt(len(sa) * len(sb))
    assert float(ea[0] @ eb[0]) == pytest.approx(exact, abs=0.06)  # std about 1 / sqrt(2048) = 0.022


def test_sketch_channel_is_batch_invariant_deterministic_and_trainable(ngram_config: ReformerConfig) -> None:
    config = ngram_config.replace(ngram_buckets=1 << 18, ngram_tf="log", ngram_projection="sketch")
    torch.manual_seed(0)
    model = ReformerEncoder(config).eval()
    model.ngrams.set_log_weights(torch.randn(1 << 18, generator=torch.Generator().manual_seed(4)))
    tok = ByteTokenizer()
    texts = ["a short document", "a much longer document that forces padding on the first row", ""]
    with torch.no_grad():
        together = model(**_args(tok(texts)))
        alone = torch.cat([model(**_args(tok([t]))) for t in texts])
        again = model(**_args(tok(texts)))
    assert torch.allclose(together, alone, atol=1e-6) and torch.equal(together, again)
    assert torch.equal(together[2], torch.zeros(48))  # no real token: the zero vector
    model.train()
    emb = model(**_args(tok(texts[:2])))
    (emb[0] @ emb[1]).backward()
    assert model.ngrams.log_weight.grad.abs().sum() > 0


def _args(batch: dict) -> dict:
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def test_sketch_model_saves_and_loads(ngram_config: ReformerConfig, tmp_path) -> None:
    config = ngram_config.replace(ngram_buckets=4096, ngram_tf="binary", ngram_projection="sketch")
    torch.manual_seed(0)
    model = ReformerEncoder(config).eval()
    model.ngrams.set_log_weights(torch.rand(4096, generator=torch.Generator().manual_seed(2)))
    model.save_pretrained(tmp_path / "m")
    loaded = ReformerEncoder.from_pretrained(tmp_path / "m")
    assert loaded.config == config and loaded.model_id == model.model_id
    batch = ByteTokenizer()(["the same text, encoded twice"])
    with torch.no_grad():
        assert torch.equal(model(**_args(batch)), loaded(**_args(batch)))


def test_new_ngram_fields_are_checked_and_left_out_at_their_defaults(ngram_config: ReformerConfig) -> None:
    assert "ngram_tf" not in ngram_config.to_dict() and "ngram_projection" not in ngram_config.to_dict()
    sketch = ngram_config.replace(ngram_tf="log", ngram_projection="sketch")
    assert sketch.to_dict()["ngram_tf"] == "log" and sketch.to_dict()["ngram_projection"] == "sketch"
    assert ReformerConfig.from_json(sketch.to_json()) == sketch
    with pytest.raises(ValueError, match=r"ngram_tf='sqrt'.*one of"):
        ngram_config.replace(ngram_tf="sqrt")
    with pytest.raises(ValueError, match=r"ngram_projection='dense'"):
        ngram_config.replace(ngram_projection="dense")
    with pytest.raises(ValueError, match=r"ngram_tf.*only with ngram_size"):
        ngram_config.replace(ngram_size=0, ngram_dim=128, ngram_buckets=16_384, ngram_weight=0.5, ngram_tf="log")
    with pytest.raises(ValueError, match="tf="):
        HashedNgrams(3, 16, 4, seed=0, tf="sqrt")
