"""Window-identity training: crops and shifted views, the loss's pairing, learning, exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from reformer_retrieval import ReformerConfig, ReformerEncoder
from reformer_retrieval.checkpoint import load_model
from reformer_retrieval.tokenizer import ByteTokenizer
from reformer_retrieval.train.window_identity import (
    ViewBatch,
    WindowIdentityConfig,
    make_batch,
    sample_crops,
    train_window_identity,
    window_identity_loss,
)

TINY = ReformerConfig(d_model=32, n_layers=2, n_heads=2, d_ff=64, embedding_dim=16, chunk_size=16, max_len=4096,
                      axial_pos_shape=(64, 64), ngram_size=3, ngram_buckets=512, ngram_dim=8, ngram_weight=0.5)


def _texts(n: int, rng: np.random.Generator) -> list[str]:
    words = [f"w{i}" for i in range(300)]
    return [" ".join(rng.choice(words, size=int(rng.integers(120, 200)))) for _ in range(n)]


def _corpus(tmp_path: Path, n: int = 30) -> Path:
    texts = _texts(n, np.random.default_rng(0))
    path = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"id": [f"d{i}" for i in range(n)], "text": texts}), path)
    return path


def _config(corpus: Path | str, **overrides) -> WindowIdentityConfig:
    settings = {"corpus": str(corpus), "width": 64, "windows": 3, "crops_per_doc": 2, "batch_crops": 6,
                "max_shift": 16, "holdout_docs": 4, "steps": 40, "lr": 3e-3, "warmup": 0.05,
                "checkpoint_seconds": 0.0, "bf16": False, "max_minutes": 5.0}
    return WindowIdentityConfig(**{**settings, **overrides})


def test_crops_come_in_groups_per_document_with_shifted_second_views() -> None:
    rng = np.random.default_rng(0)
    data = [t.encode() for t in _texts(10, rng)]
    config = _config("unused")
    pairs = sample_crops(data, np.arange(10), config, np.random.default_rng(1))
    assert len(pairs) == config.batch_crops
    size = config.windows * config.width
    for k, (first, second) in enumerate(pairs):
        assert len(first) == len(second) == size
        docs_a = [d for d in range(10) if first in data[d]]
        docs_b = [d for d in range(10) if second in data[d]]
        assert docs_a and docs_a == docs_b  # both views come from one document
        text = data[docs_a[0]]
        assert abs(text.index(second) - text.index(first)) <= config.max_shift
        if k % config.crops_per_doc:  # crops of one group share their document
            assert first in data[docs_a[0]] and pairs[k - 1][0] in data[docs_a[0]]
    again = sample_crops(data, np.arange(10), config, np.random.default_rng(1))
    assert again == pairs  # seeded


def test_the_loss_pairs_each_window_with_its_own_view(one_thread) -> None:
    torch.manual_seed(0)
    model = ReformerEncoder(TINY.replace(context_window=64)).eval()
    rng = np.random.default_rng(0)
    data = [t.encode() for t in _texts(10, rng)]
    config = _config("unused", noise_prob=0.0, noise_prob_first=0.0, max_shift=0)
    pairs = sample_crops(data, np.arange(10), config, np.random.default_rng(2))
    batch = make_batch(pairs, ByteTokenizer(), config, np.random.default_rng(3))
    assert batch.ids.shape[0] == 2 * len(pairs)
    assert batch.windows.max().item() == config.windows - 1
    with torch.no_grad():
        loss, parts, seen = window_identity_loss(model, batch, config)
        # identical views: every window finds itself; views paired with another crop's: most do not
        rolled = ViewBatch(*(torch.cat([t[0::2], t[1::2].roll(1, 0)], 1).view(-1, t.shape[1]) for t in
                             (batch.ids, batch.mask, batch.windows)))
        wrong, wrong_parts, _ = window_identity_loss(model, rolled, config)
        queue = torch.nn.functional.normalize(torch.randn(32, seen.shape[1]), dim=-1)
        queued, _, _ = window_identity_loss(model, batch, config, queue=queue)
    assert parts["accuracy"] == 1.0 and wrong_parts["accuracy"] < 0.5
    assert loss.item() < wrong.item()
    assert seen.shape == (len(pairs) * config.windows, model.config.context_dim) and not seen.requires_grad
    assert queued.item() > loss.item()  # the queue's vectors enter as extra negatives


def test_training_raises_holdout_accuracy(tmp_path: Path, one_thread) -> None:
    corpus = _corpus(tmp_path)
    torch.manual_seed(0)
    ReformerEncoder(TINY).save_pretrained(tmp_path / "init", tokenizer=ByteTokenizer())
    config = _config(corpus, init_from=str(tmp_path / "init"))
    final = train_window_identity(config, tmp_path / "run", log=lambda _: None)
    record = json.loads((final / "training.json").read_text())
    first, last = record["history"][0]["holdout"], record["history"][-1]["holdout"]
    assert last["window"] < first["window"] * 0.8 and last["accuracy"] > first["accuracy"]
    model = load_model(final)
    assert model.config.context_window == config.width and record["steps_done"] == 40
    initial = load_model(tmp_path / "init")  # the lexical channel is not trained here
    torch.testing.assert_close(initial.ngrams.log_weight, model.ngrams.log_weight)
    with pytest.raises(FileExistsError, match="--resume"):
        train_window_identity(config, tmp_path / "run", log=lambda _: None)


def test_a_stopped_run_resumes_exactly_with_its_queue(tmp_path: Path, one_thread) -> None:
    corpus = _corpus(tmp_path)
    torch.manual_seed(0)
    ReformerEncoder(TINY).save_pretrained(tmp_path / "init", tokenizer=ByteTokenizer())
    config = _config(corpus, init_from=str(tmp_path / "init"), steps=12, queue_windows=30)
    straight = load_model(train_window_identity(config, tmp_path / "straight", log=lambda _: None))
    train_window_identity(config, tmp_path / "split", log=lambda _: None, stop_after=7)
    assert json.loads((tmp_path / "split" / "model" / "training.json").read_text())["steps_done"] == 7
    logs: list[str] = []
    resumed = load_model(train_window_identity(config, tmp_path / "split", resume=True, log=logs.append))
    assert any("resumed at step 7" in line for line in logs)
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        torch.testing.assert_close(a, b, msg=name, rtol=0, atol=0)
    # the queue is part of the state: resumed without it, the run differs
    train_window_identity(config, tmp_path / "lost", log=lambda _: None, stop_after=7)
    (next((tmp_path / "lost" / "checkpoints").glob("step-*")) / "window_queue.safetensors").unlink()
    lost = load_model(train_window_identity(config, tmp_path / "lost", resume=True, log=lambda _: None))
    assert not torch.equal(lost.projection.weight, straight.projection.weight)


def test_elsewhere_views_are_other_crops_of_the_document_and_its_positives(one_thread) -> None:
    data = [t.encode() for t in _texts(8, np.random.default_rng(0))]
    config = _config("unused", second_view="elsewhere", window_weight=0.0, max_shift=0, noise_prob=0.0,
                     noise_prob_first=0.0)
    pairs = sample_crops(data, np.arange(8), config, np.random.default_rng(4))
    for first, second in pairs:
        docs = [d for d in range(8) if first in data[d]]
        assert docs and second in data[docs[0]]
    assert any(first != second for first, second in pairs)
    torch.manual_seed(0)
    model = ReformerEncoder(TINY.replace(context_window=64)).eval()
    batch = make_batch(pairs, ByteTokenizer(), config, np.random.default_rng(5))
    # swap the second views of the two crops of each document: for "elsewhere" both are positives of both
    # first views, so the loss is the same; for "shift" each first view's positive is now another crop
    order = torch.arange(len(pairs)).view(-1, 2).flip(1).reshape(-1)
    swapped = ViewBatch(*(torch.stack([t[0::2], t[1::2][order]], 1).view(-1, t.shape[1]) for t in
                          (batch.ids, batch.mask, batch.windows)))
    shift = WindowIdentityConfig(**{**config.__dict__, "second_view": "shift"})
    with torch.no_grad():
        same, parts, _ = window_identity_loss(model, batch, config)
        moved, _, _ = window_identity_loss(model, swapped, config)
        plain, _, _ = window_identity_loss(model, batch, shift)
        plain_moved, _, _ = window_identity_loss(model, swapped, shift)
    torch.testing.assert_close(same, moved)
    assert abs(plain.item() - plain_moved.item()) > 1e-3
    assert parts["window"] == 0.0 and 0.0 <= parts["doc_accuracy"] <= 1.0
    with pytest.raises(ValueError, match="second_view"):
        _config("c", second_view="nearby")


def test_bf16_runs_the_cpu_forward_under_autocast(one_thread) -> None:
    torch.manual_seed(0)
    model = ReformerEncoder(TINY.replace(context_window=64)).eval()
    data = [t.encode() for t in _texts(6, np.random.default_rng(0))]
    plain = _config("unused")
    pairs = sample_crops(data, np.arange(6), plain, np.random.default_rng(0))
    batch = make_batch(pairs, ByteTokenizer(), plain, np.random.default_rng(1))
    seen: list[torch.dtype] = []
    hook = model.projection.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    with torch.no_grad():
        exact, _, _ = window_identity_loss(model, batch, plain)
        assert set(seen) == {torch.float32}
        seen.clear()
        mixed, _, _ = window_identity_loss(model, batch, WindowIdentityConfig(**{**plain.__dict__, "bf16": True}))
    assert torch.bfloat16 in seen  # the forward ran under autocast (the pooling and losses in float32 after it)
    hook.remove()
    assert mixed.item() != exact.item() and abs(mixed.item() - exact.item()) < 0.05 * exact.item()


def test_bad_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="multiple of crops_per_doc"):
        _config("c", batch_crops=5)
    with pytest.raises(ValueError, match="max_shift"):
        _config("c", max_shift=64)
    (tmp_path / "c.json").write_text(json.dumps({"corpus": "c", "windowz": 3}))
    with pytest.raises(ValueError, match="windowz"):
        WindowIdentityConfig.from_json(tmp_path / "c.json")
