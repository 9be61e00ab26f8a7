"""`ReformerEncoder` end to end: API, determinism, batch and padding invariance, ablation sensitivity
(anchors sec. 5, tests 3, 4, 5 and 16).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from reformer_retrieval import ByteTokenizer, ReformerConfig, ReformerEncoder


@pytest.fixture
def model(tiny_config) -> ReformerEncoder:
    torch.manual_seed(0)
    return ReformerEncoder(tiny_config).eval()


def _embed(model: ReformerEncoder, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    with torch.no_grad():
        return model(ids, mask)


# ---------------------------------------------------------------------------------------------- API


def test_forward_returns_float32_unit_vectors(model, make_doc, make_batch):
    ids, mask = make_batch([make_doc(300, 0), make_doc(20, 1), make_doc(1, 2)])
    emb = _embed(model, ids, mask)
    assert emb.shape == (3, 16) and emb.dtype == torch.float32
    assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)


def test_token_states_on_request(model, make_doc, make_batch):
    ids, mask = make_batch([make_doc(70, 0), make_doc(30, 1)])
    with torch.no_grad():
        emb, states = model(ids, mask, return_token_states=True)
    assert states.shape == (2, 70, 2 * model.config.d_model)  # the caller's length, internal padding removed
    assert torch.isfinite(states).all()
    assert torch.equal(emb, _embed(model, ids, mask))


def test_missing_mask_means_all_real(model, make_doc):
    ids = make_doc(90, 3)[None]
    assert torch.equal(_embed(model, ids), _embed(model, ids, torch.ones_like(ids)))
    assert torch.equal(_embed(model, ids), _embed(model, ids, torch.ones_like(ids, dtype=torch.bool)))


def test_bad_inputs_raise_clear_errors(model):
    with pytest.raises(ValueError, match="batch, length"):
        model(torch.zeros(10, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask shape"):
        model(torch.zeros(2, 10, dtype=torch.long), torch.ones(2, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="max_len=4096"):
        model(torch.zeros(1, 4097, dtype=torch.long))


def test_document_without_real_tokens_gets_the_zero_vector(model, make_doc, make_batch):
    ids, mask = make_batch([make_doc(50, 0), make_doc(3, 1)], total=64)
    mask[1] = 0
    emb = _embed(model, ids, mask)
    assert torch.isfinite(emb).all()
    assert torch.equal(emb[1], torch.zeros(16))
    assert torch.allclose(emb[0], _embed(model, ids[:1, :50])[0], atol=1e-5)


# ---------------------------------------------------------------------------------------------- test 3


def test_repeated_eval_calls_are_identical_and_leave_the_rng_alone(model, make_doc, make_batch):
    """Anchors test 3: same input, same embedding, bit for bit; the global RNG is neither read nor moved."""
    ids, mask = make_batch([make_doc(400, 0), make_doc(77, 1)])
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = _embed(model, ids, mask)
    second = _embed(model, ids, mask)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first, second)
    torch.manual_seed(999)  # a different global stream changes nothing
    assert torch.equal(_embed(model, ids, mask), first)


def test_rotations_do_not_depend_on_the_global_seed(tiny_config):
    torch.manual_seed(1)
    a = ReformerEncoder(tiny_config)
    torch.manual_seed(2)
    b = ReformerEncoder(tiny_config)
    for la, lb in zip(a.attention_layers, b.attention_layers):
        assert torch.equal(la.rotations, lb.rotations)
    assert not torch.equal(a.token_embedding.weight, b.token_embedding.weight)


def test_save_load_keeps_rotations_and_embeddings(model, tmp_path, make_doc, make_batch):
    ids, mask = make_batch([make_doc(300, 0), make_doc(64, 1)])
    before = _embed(model, ids, mask)
    model.save_pretrained(tmp_path / "m")
    loaded = ReformerEncoder.from_pretrained(tmp_path / "m")
    assert not loaded.training
    for la, lb in zip(model.attention_layers, loaded.attention_layers):
        assert torch.equal(la.rotations, lb.rotations)
    assert torch.equal(_embed(loaded, ids, mask), before)
    assert loaded.model_id == model.model_id


@pytest.mark.slow
def test_embeddings_agree_across_processes(model, tmp_path, make_doc, make_batch):
    """A fresh interpreter (different global seed, one thread) loads the model and embeds the same input."""
    ids, mask = make_batch([make_doc(300, 0), make_doc(100, 1)])
    here = _embed(model, ids, mask)
    model.save_pretrained(tmp_path / "m")
    (tmp_path / "in.json").write_text(json.dumps({"ids": ids.tolist(), "mask": mask.tolist()}))
    script = (
        "import json, sys, torch\n"
        "torch.manual_seed(4321)\n"
        "from reformer_retrieval import ReformerEncoder\n"
        "m = ReformerEncoder.from_pretrained(sys.argv[1])\n"
        "d = json.load(open(sys.argv[2]))\n"
        "with torch.no_grad():\n"
        "    e = m(torch.tensor(d['ids']), torch.tensor(d['mask']))\n"
        "print(json.dumps({'emb': e.tolist(), 'id': m.model_id}))\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "m"), str(tmp_path / "in.json")],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    there = torch.tensor(result["emb"])
    assert result["id"] == model.model_id
    assert (there - here).abs().max().item() < 1e-6


# ---------------------------------------------------------------------------------------------- test 4


def test_batch_invariance(model, make_doc, make_batch):
    """Anchors test 4: a document's embedding ignores its batch companions and its place in the batch."""
    lengths = [300, 45, 130, 17, 1, 64]
    docs = [make_doc(n, i) for i, n in enumerate(lengths)]
    alone = torch.cat([_embed(model, *make_batch([d])) for d in docs])
    together = _embed(model, *make_batch(docs))
    order = [3, 0, 5, 2, 4, 1]
    shuffled = _embed(model, *make_batch([docs[i] for i in order]))
    assert (together - alone).abs().max().item() < 1e-5
    assert (shuffled - alone[order]).abs().max().item() < 1e-5
    # different companions for the short documents (a long one forces the LSH path on them)
    pair = _embed(model, *make_batch([docs[1], make_doc(1000, 99)]))
    assert (pair[0] - alone[1]).abs().max().item() < 1e-5


# ---------------------------------------------------------------------------------------------- test 5


@pytest.mark.parametrize("n_real", [100, 40, 7])
def test_padding_invariance_content_and_amount(model, make_doc, make_batch, n_real):
    """Anchors test 5: pad content and pad amount (several chunk multiples) leave real outputs unchanged."""
    doc = make_doc(n_real, 5)
    with torch.no_grad():
        ref_emb, ref_states = model(*make_batch([doc]), return_token_states=True)
        for total in (n_real + 1, 112, 160, 256, 413):
            for junk in (None, total):
                ids, mask = make_batch([doc], total=total, junk_seed=junk)
                emb, states = model(ids, mask, return_token_states=True)
                assert torch.isfinite(states).all()
                assert (emb - ref_emb).abs().max().item() < 1e-5, (total, junk)
                assert (states[:, :n_real] - ref_states).abs().max().item() < 1e-4, (total, junk)


def test_fully_padded_rows_and_windows_stay_finite(model, make_doc, make_batch):
    ids, mask = make_batch([make_doc(5, 0), make_doc(1, 1), make_doc(1, 2)], total=320)
    mask[2] = 0  # a row with nothing real at all
    with torch.no_grad():
        emb, states = model(ids, mask, return_token_states=True)
    assert torch.isfinite(emb).all() and torch.isfinite(states).all()
    assert torch.equal(emb[2], torch.zeros(16))
    assert torch.allclose(emb[:2].norm(dim=1), torch.ones(2), atol=1e-5)


# ---------------------------------------------------------------------------------------------- test 16


@pytest.mark.parametrize("kinds", [("lsh", "lsh"), ("lsh", "local")])
def test_every_attention_layer_changes_the_embedding(tiny_config, make_doc, kinds):
    """Anchors test 16 (HF#16972): zeroing any one attention layer's output changes the embedding, for a
    long input (LSH path) and a short one (exact path)."""
    torch.manual_seed(0)
    model = ReformerEncoder(tiny_config.replace(attention_layers=kinds)).eval()
    for n in (400, 30):
        ids = make_doc(n, 7)[None]
        base = _embed(model, ids)
        for att in model.attention_layers:
            handle = att.register_forward_hook(lambda mod, inp, out: (torch.zeros_like(out[0]), out[1]))
            try:
                ablated = _embed(model, ids)
            finally:
                handle.remove()
            assert (ablated - base).abs().max().item() > 1e-3, (n, att.kind)
        assert torch.equal(_embed(model, ids), base)  # hooks removed, nothing else changed


def test_tokenizer_output_feeds_the_model(model):
    """The tokenizer's padded batch gives each text the embedding it gets alone, repeatably, and distinct
    texts distinct embeddings (values, not just shapes)."""
    tok = ByteTokenizer(max_len=4096)
    texts = ["A long document. " * 30, "short", "A long document. " * 29 + "A long documant. "]
    batch = tok(texts)
    emb = _embed(model, batch["input_ids"], batch["attention_mask"])
    assert emb.shape == (3, 16) and batch["input_ids"].max() < ReformerConfig().vocab_size
    for i, text in enumerate(texts):
        alone = tok([text])
        assert (_embed(model, alone["input_ids"], alone["attention_mask"])[0] - emb[i]).abs().max().item() < 1e-5
    assert torch.equal(_embed(model, batch["input_ids"], batch["attention_mask"]), emb)  # deterministic
    cos = emb @ emb.T
    assert cos[0, 2] > cos[0, 1]  # a one-letter edit stays closer than an unrelated text
    assert (emb[0] - emb[1]).abs().max().item() > 1e-3


# ---------------------------------------------------------------------------------------------- shipped model

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sample.parquet"


def _light_edit(text: str, seed: int) -> str:
    """Every ~30th word reversed and the last 5% of the words dropped: a lightly edited copy."""
    rng = np.random.default_rng(seed)
    words = text.split(" ")
    for i in rng.choice(len(words), size=max(1, len(words) // 30), replace=False):
        words[i] = words[i][::-1]
    return " ".join(words[: int(len(words) * 0.95)])


@pytest.mark.slow
def test_shipped_model_each_channel_keeps_an_edited_copy_closer_than_unrelated_documents():
    """The bundled model (reformer_retrieval/assets/default), per channel of its embedding (the contextual
    Reformer part and the hashed n-gram part, `ReformerEncoder.channels`): a document and its lightly edited
    copy are closer than any two unrelated documents of the bundled sample (one per source)."""
    from reformer_retrieval.encode import Encoder

    if not SAMPLE.is_file():
        pytest.skip("examples/sample.parquet is absent")
    rows = pq.read_table(SAMPLE, columns=["text", "source", "variant"]).to_pylist()
    docs, sources = [], set()
    for row in rows:
        if row["variant"] == "original" and row["source"] not in sources:
            sources.add(row["source"])
            docs.append(row["text"][:1500])
    docs = docs[:6]
    edits = [_light_edit(d, i) for i, d in enumerate(docs)]
    encoder = Encoder.load(device="cpu")  # the shipped default
    channels = encoder.model.channels()
    assert len(channels) == (2 if encoder.model.config.ngram_size else 1)
    emb = encoder.encode(docs + edits)
    n = len(docs)
    for name, (columns, _share) in channels.items():
        part = emb[:, columns]
        part = part / np.linalg.norm(part, axis=1, keepdims=True)
        originals, copies = part[:n], part[n:]
        edited = np.einsum("ij,ij->i", originals, copies)
        unrelated = originals @ originals.T
        np.fill_diagonal(unrelated, -np.inf)
        assert edited.min() > unrelated.max() + 0.05, (name, edited.round(3), unrelated.max())
