"""`compile_fallback`: the failure record, the environment switch, the one-line notice, the recompile limit."""

from __future__ import annotations

import logging

import torch

from reformer_retrieval.model.compile_fallback import (
    compile_available,
    raise_recompile_limit,
    record_compile_failure,
)


def test_a_failure_is_recorded_per_device_and_logged_once(monkeypatch, caplog) -> None:
    monkeypatch.delenv("RR_TEST_OFF", raising=False)
    state: dict[str, object] = {}
    log = logging.getLogger("rr.test.compile_fallback")
    assert compile_available(state, "RR_TEST_OFF", "cpu")
    with caplog.at_level(logging.WARNING, logger=log.name):
        for _ in range(2):
            record_compile_failure(state, "cpu", RuntimeError("no compiler\nmore"), log, "kernel off on %s (%s: %s)")
    assert [r.getMessage() for r in caplog.records] == ["kernel off on cpu (RuntimeError: no compiler)"]
    assert not compile_available(state, "RR_TEST_OFF", torch.device("cpu"))
    assert compile_available(state, "RR_TEST_OFF", "cuda")  # another device keeps trying
    monkeypatch.setenv("RR_TEST_OFF", "0")
    assert compile_available({}, "RR_TEST_OFF", "cpu")
    monkeypatch.setenv("RR_TEST_OFF", "1")
    assert not compile_available({}, "RR_TEST_OFF", "cpu")


def test_the_recompile_limit_is_raised_never_lowered() -> None:
    import torch._dynamo

    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    with config.patch({name: 8}):  # restored on exit
        raise_recompile_limit(64)
        assert getattr(config, name) == 64
        raise_recompile_limit(16)
        assert getattr(config, name) == 64
