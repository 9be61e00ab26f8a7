"""`ReformerConfig`: every validation rule raises ValueError naming its field; JSON round trip; documentation."""

from __future__ import annotations

import dataclasses
import json

import pytest

from reformer_retrieval import ReformerConfig

SMALL = dict(max_len=4096, axial_pos_shape=(64, 64))

INVALID = [
    ({"vocab_size": 0}, "vocab_size"),
    ({"d_model": -8}, "d_model"),
    ({"d_model": 32.0}, "d_model"),
    ({"n_layers": 0}, "n_layers"),
    ({"n_layers": True}, "n_layers"),
    ({"n_heads": 0}, "n_heads"),
    ({"d_ff": 0}, "d_ff"),
    ({"embedding_dim": 0}, "embedding_dim"),
    ({"max_len": 0}, "max_len"),
    ({"chunk_size": 0}, "chunk_size"),
    ({"n_hashes": 0}, "n_hashes"),
    ({"attention_budget": 0}, "attention_budget"),
    ({"bucket_factorise_above": 0}, "bucket_factorise_above"),
    ({"pad_token_id": 260}, "pad_token_id"),
    ({"pad_token_id": -1}, "pad_token_id"),
    ({"d_model": 30, "n_heads": 4}, "n_heads"),
    ({"d_head": 0}, "d_head"),
    ({"axial_pos_shape": (64,)}, "axial_pos_shape"),
    ({"axial_pos_shape": (64, 0)}, "axial_pos_shape"),
    ({"axial_pos_shape": (32, 64)}, "axial_pos_shape"),  # 2048 < max_len 4096
    ({"axial_pos_dims": (100, 100)}, "axial_pos_dims"),
    ({"axial_pos_dims": (0, 256)}, "axial_pos_dims"),
    ({"attention_layers": ("lsh",)}, "attention_layers"),
    ({"n_layers": 2, "attention_layers": ("lsh", "global")}, "attention_layers"),
    ({"local_chunk_size": 0}, "local_chunk_size"),
    ({"max_len": 4000}, "max_len"),  # not a multiple of chunk_size 64
    ({"local_chunk_size": 96}, "max_len"),  # 4096 is not a multiple of 96
    ({"chunks_before": 2}, "chunks_before"),
    ({"chunks_after": -1}, "chunks_after"),
    ({"n_hashes_eval": 0}, "n_hashes_eval"),
    ({"num_buckets": 7}, "num_buckets"),
    ({"num_buckets": 0}, "num_buckets"),
    ({"num_buckets": (4, 6, 8)}, "num_buckets"),
    ({"num_buckets": (4, 5)}, "num_buckets"),
    ({"hash_seed": -1}, "hash_seed"),
    ({"ff_chunk_size": -1}, "ff_chunk_size"),
    ({"dropout": 1.0}, "dropout"),
    ({"dropout": -0.1}, "dropout"),
    ({"attention_dropout": 1.5}, "attention_dropout"),
    ({"axial_init_std": 0.0}, "axial_init_std"),
    ({"init_std": -1.0}, "init_std"),
    ({"layer_norm_eps": 0.0}, "layer_norm_eps"),
    ({"reversible": 1}, "reversible"),
]


@pytest.mark.parametrize(("changes", "field"), INVALID, ids=[f"{f}-{i}" for i, (_, f) in enumerate(INVALID)])
def test_invalid_values_raise_valueerror_naming_the_field(changes, field):
    kwargs = {**SMALL, **changes}
    with pytest.raises(ValueError, match=rf"ReformerConfig\.{field}=") as info:
        ReformerConfig(**kwargs)
    message = str(info.value)
    assert ": " in message and len(message.splitlines()) == 1  # names the rule, one line


def test_valid_edge_cases_are_accepted():
    ReformerConfig(**SMALL, chunks_before=0, chunks_after=0, dropout=0.0, n_hashes_eval=8)
    ReformerConfig(**SMALL, d_model=30, n_heads=4, d_head=8)  # explicit d_head lifts the divisibility rule
    ReformerConfig(**SMALL, num_buckets=(4, 8))
    ReformerConfig(**SMALL, n_layers=3, attention_layers=("local", "lsh", "local"), local_chunk_size=128)
    cfg = ReformerConfig(max_len=4096, axial_pos_shape=[64, 64], attention_layers=None, num_buckets=[2, 4])
    assert cfg.axial_pos_shape == (64, 64) and cfg.num_buckets == (2, 4)  # lists become tuples


def test_derived_values():
    cfg = ReformerConfig(**SMALL, d_model=64, n_heads=4, n_hashes=2, n_layers=2)
    assert cfg.head_dim == 16
    assert cfg.layer_kinds == ("lsh", "lsh")
    assert cfg.eval_hashes == 2 and cfg.max_hashes == 2
    assert cfg.local_chunk == cfg.chunk_size
    assert cfg.axial_dims == (32, 32)
    more = cfg.replace(n_hashes_eval=6, local_chunk_size=32, d_head=10, axial_pos_dims=(16, 48))
    assert more.eval_hashes == 6 and more.max_hashes == 6
    assert more.local_chunk == 32 and more.head_dim == 10 and more.axial_dims == (16, 48)


def test_json_round_trip_text_and_file(tmp_path):
    cfg = ReformerConfig(
        **SMALL, d_model=48, n_layers=3, n_heads=3, attention_layers=("lsh", "local", "lsh"),
        num_buckets=(4, 8), axial_pos_dims=(16, 32), n_hashes_eval=6, dropout=0.1, extra={"note": "x"},
    )
    text = cfg.to_json()
    assert json.loads(text)["attention_layers"] == ["lsh", "local", "lsh"]
    assert ReformerConfig.from_json(text) == cfg
    path = tmp_path / "config.json"
    path.write_text(text)
    assert ReformerConfig.from_json(path) == cfg
    assert ReformerConfig.from_json(str(path)) == cfg
    assert ReformerConfig.from_dict(cfg.to_dict()) == cfg
    assert ReformerConfig.from_json(text).to_json() == text  # stable text (sorted keys)


def test_json_with_unknown_or_invalid_fields_is_refused():
    data = ReformerConfig(**SMALL).to_dict()
    with pytest.raises(ValueError, match=r"unknown field.*bogus"):
        ReformerConfig.from_dict({**data, "bogus": 1})
    with pytest.raises(ValueError, match=r"ReformerConfig\.chunk_size="):
        ReformerConfig.from_json(json.dumps({**data, "chunk_size": 0}))


def test_config_is_frozen_and_replace_validates():
    cfg = ReformerConfig(**SMALL)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.d_model = 8  # type: ignore[misc]
    assert cfg.replace(d_model=64, n_heads=4).d_model == 64
    assert cfg.d_model == 256
    with pytest.raises(ValueError, match=r"ReformerConfig\.dropout="):
        cfg.replace(dropout=2.0)


def test_every_field_is_documented():
    doc = ReformerConfig.__doc__ or ""
    for f in dataclasses.fields(ReformerConfig):
        assert f"    {f.name}: " in doc, f.name
