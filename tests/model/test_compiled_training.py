"""The inductor-compiled training attention (`compiled_training`): same values and gradients as the eager
path, only with gradients in training mode, and a one-line fallback where compiling fails."""

from __future__ import annotations

import logging

import pytest
import torch

import reformer_retrieval.model.compiled_training as compiled_training
import reformer_retrieval.model.lsh_attention as lsh_attention
from reformer_retrieval import ReformerEncoder

from .conftest import pad_batch, random_doc


@pytest.fixture
def counted(monkeypatch):
    """Count calls of the compiled function (the real one, compiled once per shape)."""
    calls = []
    real = compiled_training.compiled_chunked_attention()

    def wrapped(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(lsh_attention, "compiled_chunked_attention", lambda: wrapped)
    monkeypatch.setattr(compiled_training, "_STATE", {})
    return calls


def _step(model: ReformerEncoder, ids: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor):
    for p in model.parameters():
        p.grad = None
    out = model(ids, mask)
    (out * weight).sum().backward()
    return out.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.slow
def test_compiled_training_equals_eager_in_values_and_gradients(tiny_config, counted) -> None:
    torch.manual_seed(0)
    model = ReformerEncoder(tiny_config).train()
    ids, mask = pad_batch([random_doc(96, 1), random_doc(70, 2)])  # LSH path, one padded document
    weight = torch.randn(ids.shape[0], tiny_config.embedding_dim, generator=torch.Generator().manual_seed(3))
    eager = _step(model, ids, mask, weight)
    assert not counted
    model.compile_attention_for_training(True)
    compiled = _step(model, ids, mask, weight)
    assert counted  # the reversible backward's recomputation ran the compiled attention
    # the reversible stack's output comes from its no-grad (eager) forward; the gradients come from the
    # compiled recomputation, so they are what this compares
    torch.testing.assert_close(compiled[0], eager[0], atol=1e-5, rtol=1e-4)
    assert len(compiled[1]) == len(eager[1])
    for got, want in zip(compiled[1], eager[1]):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-3)
    calls = len(counted)
    with torch.no_grad():
        model(ids, mask)  # no gradients: the eager fused kernel
    model.eval()
    model(ids, mask).sum().backward()  # evaluation mode: eager too
    assert len(counted) == calls
    model.compile_attention_for_training(False)
    model.train()
    _step(model, ids, mask, weight)
    assert len(counted) == calls


def test_a_failed_compile_logs_one_line_and_runs_eager(tiny_config, monkeypatch, caplog) -> None:
    monkeypatch.setattr(compiled_training, "_STATE", {})

    def broken(*a, **k):
        raise RuntimeError("CppCompileError: no C++ compiler\nsecond line")

    monkeypatch.setattr(lsh_attention, "compiled_chunked_attention", lambda: broken)
    torch.manual_seed(0)
    model = ReformerEncoder(tiny_config).train()
    ids, mask = pad_batch([random_doc(96, 1)])
    weight = torch.ones(1, tiny_config.embedding_dim)
    eager = _step(model, ids, mask, weight)
    model.compile_attention_for_training(True)
    with caplog.at_level(logging.WARNING, logger=compiled_training.__name__):
        fallback = _step(model, ids, mask, weight)
        _step(model, ids, mask, weight)
    lines = [r.getMessage() for r in caplog.records if r.name == compiled_training.__name__]
    assert len(lines) == 1 and "RuntimeError: CppCompileError: no C++ compiler" in lines[0]
    assert "second line" not in lines[0]
    assert not compiled_training.compiled_available("cpu")
    torch.testing.assert_close(fallback[0], eager[0])
    monkeypatch.setenv("REFORMER_NO_COMPILE", "1")
    monkeypatch.setattr(compiled_training, "_STATE", {})
    assert not compiled_training.compiled_available("cpu")


def test_attention_dropout_keeps_the_eager_path(tiny_config, counted) -> None:
    # the reversible backward recomputes the attention: compiled, inductor's dropout would draw another mask
    # than the eager no-grad forward did, and the gradients would be wrong
    model = ReformerEncoder(tiny_config.replace(attention_dropout=0.2)).train()
    model.compile_attention_for_training(True)
    ids, mask = pad_batch([random_doc(96, 1)])
    _step(model, ids, mask, torch.ones(1, tiny_config.embedding_dim))
    assert not counted
