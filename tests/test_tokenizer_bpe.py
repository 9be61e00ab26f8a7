"""The BPE tokenizer: trained deterministically, shorter than bytes, truncation reported, saved without pickle
and loaded back by `load_tokenizer`; a tiny model trains and encodes with it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tokenizers")

from reformer_retrieval.checkpoint import load_tokenizer
from reformer_retrieval.tokenizer import ByteTokenizer
from reformer_retrieval.tokenizer_bpe import BPETokenizer, train_bpe

WORDS = ["the", "river", "ran", "past", "the", "old", "mill", "where", "the", "miller", "kept", "his", "sacks", "of", "grain", "and", "flour"]


def _texts(n: int = 80, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=60)) + "." for _ in range(n)]


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    return train_bpe(_texts(), vocab_size=400, lowercase=True, collapse_whitespace=True, normalization="NFKC")


def test_bpe_is_deterministic_shorter_than_bytes_and_round_trips(bpe: BPETokenizer) -> None:
    again = train_bpe(_texts(), vocab_size=400, lowercase=True, collapse_whitespace=True, normalization="NFKC")
    text = "The  Miller kept his GRAIN by the river."
    ids, total = bpe.encode(text)
    assert ids.tolist() == again.encode(text)[0].tolist()
    assert total == len(ids) and ids.min() >= 4  # no specials inside a text
    assert total < ByteTokenizer().encode(text)[1] / 2
    assert bpe.decode(ids) == "the miller kept his grain by the river."
    assert bpe.bytes_per_token > 2.0 and bpe.vocab_size <= 400
    noisy, _ = bpe.encode("tlie rnill€r kcpt")  # noise and unseen characters never fall out of the vocabulary
    assert bpe.decode(noisy) == "tlie rnill€r kcpt"


def test_bpe_truncation_is_reported_and_batches_pad(bpe: BPETokenizer) -> None:
    ids, total = bpe.encode(_texts(1)[0], max_len=5)
    assert len(ids) == 5 and total > 5
    batch = bpe(["the mill", _texts(1)[0]], max_len=8)
    assert batch["input_ids"].shape == (2, 8) and batch["truncated"] == [False, True]
    assert batch["attention_mask"][0].sum().item() == batch["n_tokens"][0]


def test_bpe_saves_as_json_and_loads_through_load_tokenizer(bpe: BPETokenizer, tmp_path: Path) -> None:
    bpe.save(tmp_path)
    meta = json.loads((tmp_path / "tokenizer.json").read_text())
    assert meta["kind"] == "bpe" and meta["vocab_size"] == bpe.vocab_size
    json.loads((tmp_path / "bpe.json").read_text())  # the vocabulary is plain JSON
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded, BPETokenizer)
    text = _texts(1, seed=5)[0]
    assert loaded.encode(text)[0].tolist() == bpe.encode(text)[0].tolist()
    assert loaded.bytes_per_token == bpe.bytes_per_token  # exact: training windows (and resume) depend on it
    (tmp_path / "bpe.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"bpe\.json"):
        load_tokenizer(tmp_path)


def test_bpe_vocab_size_must_leave_room_for_merges() -> None:
    with pytest.raises(ValueError, match="vocab_size must exceed 260"):
        train_bpe(_texts(5), vocab_size=200)


def test_a_tiny_model_trains_and_encodes_with_a_bpe_vocabulary(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from reformer_retrieval.encode import Encoder
    from reformer_retrieval.train import CurriculumPhase, TrainConfig, Trainer

    corpus = tmp_path / "c.parquet"
    texts = _texts(40, seed=1)
    pq.write_table(pa.table({"id": [f"d{i}" for i in range(40)], "text": texts}), corpus)
    cfg = TrainConfig(
        model=dict(d_model=32, n_layers=2, n_heads=2, d_ff=64, embedding_dim=16, chunk_size=16, max_len=512,
                   axial_pos_shape=(16, 32), n_hashes=2),
        tokenizer={"kind": "bpe", "vocab_size": 320, "lowercase": True, "collapse_whitespace": True},
        steps=2, seed=0, curriculum=(CurriculumPhase(until=1.0, max_tokens=64, batch_size=6),),
        val_docs=0, checkpoint_every=0, device="cpu", num_workers=0, progress=False,
    )
    record = Trainer(cfg, corpus, tmp_path / "run").run()
    assert record["tokenizer"]["kind"] == "bpe"
    tok = load_tokenizer(tmp_path / "run")
    assert isinstance(tok, BPETokenizer)
    encoder = Encoder.load(tmp_path / "run")
    assert encoder.model.config.vocab_size == tok.vocab_size
    emb = encoder.encode(texts[:3])
    assert emb.shape == (3, 16) and np.isfinite(emb).all()

    # fine-tuning the BPE model: the config must name the same tokenizer
    from reformer_retrieval.train import TrainError

    tuned = cfg.replace(init_from=str(tmp_path / "run"), model={})  # the same config: vocab_size 320 asked, 315 made
    assert Trainer(tuned, corpus, tmp_path / "tuned").run()["init_from"]["model_id"] == record["model_id"]
    as_bytes = tuned.replace(tokenizer={"lowercase": True, "collapse_whitespace": True})
    with pytest.raises(TrainError, match=r"tokenizer differs from the config's in \['kind'"):
        Trainer(as_bytes, corpus, tmp_path / "as_bytes").run()


def test_train_config_checks_the_bpe_keys() -> None:
    from reformer_retrieval.train import TrainConfig

    with pytest.raises(ValueError, match="'bpe' only"):
        TrainConfig(tokenizer={"vocab_size": 1000})
    with pytest.raises(ValueError, match="train_bytes must be a positive integer"):
        TrainConfig(tokenizer={"kind": "bpe", "vocab_size": 1000, "train_bytes": 0})
    with pytest.raises(ValueError, match="needs an integer vocab_size"):
        TrainConfig(tokenizer={"kind": "bpe"})


def test_a_bpe_model_refuses_the_byte_tokenizer(bpe: BPETokenizer) -> None:
    from reformer_retrieval import ReformerConfig, ReformerEncoder
    from reformer_retrieval.encode import Encoder

    model = ReformerEncoder(ReformerConfig(
        vocab_size=bpe.vocab_size, d_model=32, n_layers=2, n_heads=2, d_ff=64, embedding_dim=16, chunk_size=16,
        max_len=256, axial_pos_shape=(16, 16),
    ))
    with pytest.raises(ValueError, match="pass the model's own tokenizer"):
        Encoder(model)
    assert Encoder(model, bpe).encode(["the mill"]).shape == (1, 16)
