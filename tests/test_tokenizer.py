"""`ByteTokenizer`: normalisation, ids, padding, truncation records, type errors, save / load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from reformer_retrieval import ByteTokenizer, ReformerConfig


def test_ids_are_utf8_bytes_after_the_specials():
    tok = ByteTokenizer()
    assert tok.pad_token_id == 0 and tok.mask_token_id == 1
    assert tok.vocab_size == 260 == ReformerConfig().vocab_size
    ids, total = tok.encode("hé")
    assert ids.dtype == np.int64
    assert ids.tolist() == [ord("h") + 4, 0xC3 + 4, 0xA9 + 4]
    assert total == 3
    assert tok.decode(ids) == "hé"
    assert tok.decode(torch.tensor([0, *ids.tolist(), 0, 1])) == "hé"  # specials dropped


def test_batch_is_padded_to_the_longest_text():
    tok = ByteTokenizer()
    batch = tok(["hello", "hi", ""])
    assert batch["input_ids"].dtype == torch.long and batch["attention_mask"].dtype == torch.long
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (3, 5)
    assert batch["attention_mask"].tolist() == [[1] * 5, [1, 1, 0, 0, 0], [0] * 5]
    assert batch["input_ids"][1].tolist() == [ord("h") + 4, ord("i") + 4, 0, 0, 0]
    assert batch["n_tokens"] == [5, 2, 0]
    assert batch["truncated"] == [False, False, False]


def test_single_string_is_one_text_and_empty_list_is_an_empty_batch():
    tok = ByteTokenizer()
    one = tok("abc")
    assert one["input_ids"].shape == (1, 3) and one["n_tokens"] == [3]
    empty = tok([])
    assert empty["input_ids"].shape == (0, 0) and empty["n_tokens"] == [] and empty["truncated"] == []


def test_truncation_is_reported_never_silent():
    tok = ByteTokenizer(max_len=5)
    batch = tok(["hello world", "hey", "12345"])
    assert batch["input_ids"].shape == (3, 5)
    assert batch["n_tokens"] == [5, 3, 5]
    assert batch["truncated"] == [True, False, False]
    ids, total = tok.encode("hello world")
    assert len(ids) == 5 and total == 11
    override = tok(["hello world"], max_len=8)
    assert override["n_tokens"] == [8] and override["truncated"] == [True]
    assert ByteTokenizer().max_len == 65536


def test_unicode_normalisation_is_configurable():
    decomposed = "e\u0301"  # e + combining acute
    assert ByteTokenizer()(decomposed)["n_tokens"] == [2]  # NFC: one precomposed char, 2 UTF-8 bytes
    assert ByteTokenizer(normalization=None)(decomposed)["n_tokens"] == [3]
    nfc = ByteTokenizer()(["\u00e9", decomposed])["input_ids"]
    assert torch.equal(nfc[0], nfc[1])  # canonically equal texts give equal ids
    assert ByteTokenizer(normalization="NFKC").normalize("\ufb01") == "fi"  # ligature folded
    assert ByteTokenizer().normalize("\ufb01") == "\ufb01"  # NFC keeps it
    assert ByteTokenizer(normalization="NFD").normalize("\u00e9") == decomposed


def test_lowercase_and_whitespace_options():
    tok = ByteTokenizer(lowercase=True, collapse_whitespace=True)
    assert tok.normalize("  Hello \t\n  WORLD  ") == "hello world"
    assert ByteTokenizer().normalize("  A  b ") == "  A  b "
    assert tok(["A  B"])["input_ids"].tolist() == tok(["a b"])["input_ids"].tolist()


@pytest.mark.parametrize("bad", [123, None, b"bytes", 4.5, {"a": 1}, (t for t in ["a"])])
def test_wrong_container_types_raise_typeerror(bad):
    with pytest.raises(TypeError, match="expects a str or a list of str"):
        ByteTokenizer()(bad)


@pytest.mark.parametrize("bad_item", [1, None, b"x", ["nested"]])
def test_wrong_item_types_raise_typeerror_naming_the_item(bad_item):
    with pytest.raises(TypeError, match=r"list of str; item 1 is"):
        ByteTokenizer()(["fine", bad_item])


def test_encode_rejects_non_strings():
    with pytest.raises(TypeError, match="expects a str"):
        ByteTokenizer().encode(b"bytes")  # type: ignore[arg-type]


def test_invalid_settings_raise_valueerror():
    with pytest.raises(ValueError, match="normalization"):
        ByteTokenizer(normalization="NFX")
    with pytest.raises(ValueError, match="max_len"):
        ByteTokenizer(max_len=0)


def test_save_and_load_round_trip(tmp_path):
    tok = ByteTokenizer(max_len=1000, normalization="NFKC", lowercase=True, collapse_whitespace=True)
    path = tok.save(tmp_path)
    assert path == tmp_path / "tokenizer.json"
    data = json.loads(path.read_text())
    assert data == {
        "kind": "bytes", "max_len": 1000, "normalization": "NFKC", "lowercase": True, "collapse_whitespace": True,
    }
    loaded = ByteTokenizer.load(tmp_path)
    assert loaded.config == tok.config
    text = ["  \ufb01 TEXT  ", "Hé"]
    for key in ("input_ids", "attention_mask"):
        assert torch.equal(loaded(text)[key], tok(text)[key])
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))  # atomic write left no temp
    assert "NFKC" in repr(loaded)


def test_load_without_a_file_gives_the_default_and_other_kinds_are_refused(tmp_path):
    assert ByteTokenizer.load(tmp_path).config == ByteTokenizer().config
    (tmp_path / "tokenizer.json").write_text(json.dumps({"kind": "sentencepiece"}))
    with pytest.raises(ValueError, match="sentencepiece"):
        ByteTokenizer.load(tmp_path)


def test_invalid_utf8_surrogates_do_not_crash():
    tok = ByteTokenizer()
    batch = tok(["bad \ud800 surrogate"])
    assert batch["n_tokens"][0] == len("bad  surrogate") + 3
