"""Smoke tests of benchmarks/compile_cost.py: the mixed corpus, one in-process measurement on the
chunked path (no compilation), the report. Loaded from the checkout by path; skipped without it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"
if not (BENCH_DIR / "compile_cost.py").is_file():
    pytest.skip("benchmarks/compile_cost.py not in this checkout", allow_module_level=True)


def _load(name: str):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCH_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


cc = _load("compile_cost")


def test_mixed_lengths_are_seeded_log_uniform_and_span_the_range():
    a = cc.mixed_lengths(12, 100, 65_536, seed=3)
    assert a == cc.mixed_lengths(12, 100, 65_536, seed=3) != cc.mixed_lengths(12, 100, 65_536, seed=4)
    assert len(a) == 12 and min(a) == 100 and max(a) == 65_536
    assert sum(n < 2_000 for n in a) >= 2 and sum(n > 8_000 for n in a) >= 2  # both ends populated
    with pytest.raises(ValueError):
        cc.mixed_lengths(1, 100, 200, seed=0)


def test_measure_reports_the_first_and_second_encode(one_thread):
    spec = {"corpus": "mixed", "seed": 0, "threads": 1, "lengths": [100, 300, 700], "run": "chunked",
            "impl": "chunked"}
    row = cc.measure(spec)
    assert row["status"] == "ok" and row["docs"] == 3 and row["tokens"] == 1_100
    assert row["first_encode_s"] > 0 and row["second_encode_s"] > 0
    assert row["padded_lengths"] == [] and row["same_vectors"] and not row["flex_failed"]
    report = cc.summarise([row, {**spec, "run": "flex, cold cache", "status": "timeout", "note": "exceeded"}])
    assert "chunked" in report and "exceeded" in report and "first encode s" in report


def test_cli_rejects_an_unknown_corpus():
    with pytest.raises(SystemExit):
        cc.parse_args(["--corpora", "wiki"])
