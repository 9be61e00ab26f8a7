"""Model directories: safetensors + JSON (no pickle), a stable `model_id`, clear errors for broken ones."""

from __future__ import annotations

import json
import pickle
import struct

import pytest
import torch
from safetensors import safe_open

from reformer_retrieval import ByteTokenizer, ReformerConfig, ReformerEncoder
from reformer_retrieval.checkpoint import (
    ModelDirectoryError,
    load_model,
    load_tokenizer,
    read_training,
    save_model,
)

CFG = ReformerConfig(
    d_model=16, n_layers=2, n_heads=2, d_ff=32, embedding_dim=8, chunk_size=16, max_len=1024,
    axial_pos_shape=(32, 32), n_hashes=2, attention_layers=("lsh", "local"),
)


@pytest.fixture
def model() -> ReformerEncoder:
    torch.manual_seed(0)
    return ReformerEncoder(CFG).eval()


def _ids() -> torch.Tensor:
    return torch.randint(4, 260, (2, 120), generator=torch.Generator().manual_seed(1))


def test_save_writes_json_and_safetensors_only(model, tmp_path):
    out = model.save_pretrained(tmp_path / "m", training={"steps": 3, "loss": 0.5})
    assert out == tmp_path / "m"
    names = sorted(p.name for p in out.iterdir())
    assert names == ["config.json", "model.safetensors", "tokenizer.json", "training.json"]
    assert ReformerConfig.from_json(out / "config.json") == CFG
    raw = (out / "model.safetensors").read_bytes()
    header_len = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + header_len])  # a safetensors header: plain JSON, no pickle opcodes
    assert "rotations" in " ".join(header)
    assert not raw.startswith(b"\x80") and not raw.startswith(b"PK")  # neither a pickle nor a torch zip
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert set(f.keys()) == set(model.state_dict())
        assert f.metadata()["model_id"] == model.model_id


def test_load_never_unpickles(model, tmp_path, monkeypatch):
    model.save_pretrained(tmp_path)

    def forbidden(*args, **kwargs):
        raise AssertionError("pickle used while loading a model directory")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    loaded = ReformerEncoder.from_pretrained(tmp_path)
    assert loaded.model_id == model.model_id


def test_round_trip_restores_weights_buffers_and_outputs(model, tmp_path):
    model.save_pretrained(tmp_path)
    loaded = load_model(tmp_path)
    assert not loaded.training
    assert loaded.config == model.config
    state, loaded_state = model.state_dict(), loaded.state_dict()
    assert state.keys() == loaded_state.keys()
    for name in state:
        assert torch.equal(state[name], loaded_state[name]), name
    with torch.no_grad():
        assert torch.equal(loaded(_ids()), model(_ids()))


def test_model_id_is_stable_and_tracks_weights_buffers_and_config(model, tmp_path):
    mid = model.model_id
    assert len(mid) == 12 and int(mid, 16) >= 0
    assert model.model_id == mid  # stable across calls
    model.save_pretrained(tmp_path / "a")
    loaded = ReformerEncoder.from_pretrained(tmp_path / "a")
    assert loaded.model_id == mid  # stable across save / load
    model.save_pretrained(tmp_path / "b")
    assert ReformerEncoder.from_pretrained(tmp_path / "b").model_id == mid  # and across saves
    with torch.no_grad():
        loaded.stack.layers[1].feed_forward.dense_out.weight[0, 0] += 1e-3  # one weight
    assert loaded.model_id != mid
    other = ReformerEncoder.from_pretrained(tmp_path / "a")
    with torch.no_grad():
        other.attention_layers[0].rotations[0, 0, 0, 0] += 1.0  # one buffer
    assert other.model_id != mid
    same_weights = ReformerEncoder(CFG.replace(dropout=0.1))
    same_weights.load_state_dict(model.state_dict())
    assert same_weights.model_id != mid  # the config is part of the identity


def test_tokenizer_and_training_record_travel_with_the_model(model, tmp_path):
    tok = ByteTokenizer(max_len=1024, lowercase=True)
    save_model(model, tmp_path, tokenizer=tok, training={"data": "corpus.parquet", "steps": 10})
    assert load_tokenizer(tmp_path).config == tok.config
    assert read_training(tmp_path) == {"data": "corpus.parquet", "steps": 10}
    default_dir = tmp_path / "plain"
    save_model(model, default_dir)
    assert load_tokenizer(default_dir).max_len == CFG.max_len  # a default tokenizer sized to the model
    assert read_training(default_dir) == {}


def test_save_leaves_no_temporary_files_and_overwrites_cleanly(model, tmp_path):
    model.save_pretrained(tmp_path)
    with torch.no_grad():
        model.projection.bias += 1.0
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert ReformerEncoder.from_pretrained(tmp_path).model_id == model.model_id


def test_missing_files_raise_model_directory_error(model, tmp_path):
    with pytest.raises(ModelDirectoryError, match=r"config\.json"):
        load_model(tmp_path / "nowhere")
    model.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(ModelDirectoryError, match=r"model\.safetensors"):
        load_model(tmp_path)
    assert issubclass(ModelDirectoryError, FileNotFoundError)


def test_weights_that_do_not_fit_the_config_are_refused(model, tmp_path):
    model.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(CFG.replace(d_ff=48).to_json())
    with pytest.raises(ModelDirectoryError, match="do not fit its config"):
        load_model(tmp_path)


def test_reversible_and_plain_models_share_checkpoints(model, tmp_path):
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["reversible"] = False
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    plain = load_model(tmp_path)
    assert plain.config.reversible is False
    with torch.no_grad():
        assert torch.allclose(plain(_ids()), model(_ids()), atol=1e-6)
