"""Smoke tests of benchmarks/encoder_speed.py and benchmarks/_common.py on tiny sizes.

The benchmark lives outside the package, so it is loaded from the repository checkout by path; the tests
skip when the checkout has no benchmarks folder (e.g. an unpacked sdist).
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
import time
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"
if not (BENCH_DIR / "encoder_speed.py").is_file():
    pytest.skip("benchmarks/encoder_speed.py not in this checkout", allow_module_level=True)


def _load(name: str):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCH_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


es = _load("encoder_speed")
common = sys.modules["_common"]

HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None
ROW_KEYS = {"impl", "mode", "length", "tokens_per_s", "peak_mb", "base_mb", "seconds", "status"}
TINY = dict(
    device="cpu", dtype="fp32", d_model=32, n_layers=2, n_heads=2, d_ff=64, chunk=16, n_hashes=2,
    reversible=True, repeats=1, budget_s=30.0, seed=0, threads=0, series="main",
)


def _impls():
    return ["ours", "sdpa", pytest.param("hf", marks=pytest.mark.skipif(not HAS_TRANSFORMERS, reason="no transformers"))]


@pytest.mark.parametrize("mode", ["inference", "train"])
@pytest.mark.parametrize("impl", _impls())
def test_measure_returns_a_complete_row(impl, mode):
    # 128 tokens = 8 chunks of 16: the LSH path (not the exact fallback) runs for both Reformers.
    row = es.measure({**TINY, "impl": impl, "mode": mode, "length": 128})
    assert set(row) >= ROW_KEYS
    assert row["status"] == "ok"
    assert (row["impl"], row["mode"], row["length"]) == (impl, mode, 128)
    assert row["tokens_per_s"] > 0 and row["seconds"] > 0
    assert row["peak_mb"] >= row["base_mb"] > 0
    assert row["n_timed"] >= 1
    # the row measured the model the spec asks for (not, say, a default-sized one)
    builder = {"ours": es._build_ours, "sdpa": es._build_sdpa, "hf": es._build_hf}[impl]
    assert row["n_params"] == sum(p.numel() for p in builder({**TINY}, 128).parameters())
    json.dumps(row)  # rows must be JSON-serialisable


def test_ours_runs_the_lsh_path_it_is_timed_for():
    """At 128 tokens (8 chunks of 16) every layer of the benchmarked Reformer hashes: the LSH path is what
    the timing measures, not the exact short-input fallback."""
    import torch

    model = es._build_ours({**TINY}, 128).eval()
    cfg = model.config
    assert set(cfg.layer_kinds) == {"lsh"} and (cfg.chunk_size, cfg.n_hashes) == (16, 2)
    assert (cfg.chunks_before, cfg.chunks_after) == (1, 1)
    ids = torch.randint(4, 260, (1, 128), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(ids, torch.ones_like(ids))
    assert all(layer.hash_calls >= 1 for layer in model.attention_layers)


def test_sdpa_baseline_is_exact_attention():
    """The SDPA baseline computes softmax(q k^T / sqrt(d)) v over every key: its first layer equals a
    hand-written exact pre-norm transformer layer on the same weights."""
    import torch
    import torch.nn.functional as F

    model = es._build_sdpa({**TINY}, 128).double().eval()
    layer = model.layers[0]
    x = torch.randn(1, 128, TINY["d_model"], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    h = layer.norm1(x)
    d, heads = TINY["d_model"], TINY["n_heads"]
    q, k, v = (t.view(1, 128, heads, d // heads).transpose(1, 2) for t in layer.qkv(h).chunk(3, dim=-1))
    att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // heads), dim=-1) @ v
    y = x + layer.out(att.transpose(1, 2).reshape(1, 128, d))
    y = y + layer.ff_out(F.gelu(layer.ff_in(layer.norm2(y))))
    with torch.no_grad():
        assert torch.allclose(layer(x), y, atol=1e-10)


def test_same_shape_across_impls():
    # The Reformer anchor and ours get the same width/depth/heads: parameter counts are of one order.
    ours = es._build_ours({**TINY}, 128)
    exact = es._build_sdpa({**TINY}, 128)
    n_ours = sum(p.numel() for p in ours.parameters())
    n_exact = sum(p.numel() for p in exact.parameters())
    assert 0.5 < n_ours / n_exact < 2.0
    assert es.axial_shape(65536) == (256, 256)
    assert es.axial_shape(4096 * 3) == (96, 128)


def test_unknown_impl_is_an_error_row():
    row = json.loads(_child_line({**TINY, "impl": "nope", "mode": "inference", "length": 128}))
    assert row["status"] == "error" and "unknown impl" in row["note"]


def _child_line(spec):
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        common.child_main(es.measure, json.dumps(spec))
    line = buf.getvalue().strip().splitlines()[-1]
    assert line.startswith(common.RESULT_MARKER)
    return line[len(common.RESULT_MARKER):]


def _fake(impl, mode, length, tps, peak, base=100.0, series="main", **kw):
    return {"impl": impl, "mode": mode, "length": length, "tokens_per_s": tps, "peak_mb": peak, "base_mb": base,
            "seconds": length / tps, "status": "ok", "series": series, "device": "cpu", "n_layers": 6,
            "reversible": True, **kw}


def test_summarise_ratios_and_checks():
    rows = [
        _fake("ours", "inference", 16384, 6000, 500), _fake("hf", "inference", 16384, 1500, 1500),
        _fake("sdpa", "inference", 16384, 1000, 400),
        _fake("ours", "inference", 65536, 5000, 1500), _fake("hf", "inference", 65536, 1700, 4000),
        _fake("sdpa", "inference", 65536, 300, 700),
        _fake("ours", "train", 16384, 1000, 700, series="reversible", n_layers=12),
        _fake("ours", "train", 16384, 1100, 2100, series="reversible", n_layers=12, reversible=False),
        {**_fake("sdpa", "train", 65536, 1, 1), "status": "skipped", "tokens_per_s": None, "note": "projected"},
    ]
    text, checks = es.summarise(rows)
    assert "| inference | 16,384 | 6,000 | 1,500 | 1,000 | 4.00x | 6.00x |" in text
    assert "sdpa train 65,536: skipped: projected" in text.replace("SDPA exact", "sdpa")
    by_name = {c["check"]: c for c in checks}
    assert by_name["inference 16384: tok/s ours/HF >= 3"]["pass"]
    assert by_name["inference 65536: tok/s ours/SDPA >= 5"]["value"] == pytest.approx(5000 / 300, abs=1e-3)
    assert by_name["inference 65536: peak ours/HF <= 0.5"]["pass"]
    assert by_name["inference peak growth 16K->64K <= 4.5x"]["pass"]  # 1500 / 500 = 3.0x
    assert by_name["train peak reversible/plain <= 0.5"]["value"] == pytest.approx(1 / 3, abs=1e-3)
    assert by_name["inference 16384: peak ours/HF <= 0.5"]["value"] == pytest.approx(1 / 3, abs=1e-3)
    assert len(checks) == 7


def test_skip_reason_extrapolates_and_stops_after_failures():
    spec = {"impl": "sdpa", "mode": "train", "length": 65536, "device": "cpu"}
    done = [_fake("sdpa", "train", 4096, 4096 / 2.0, 300), _fake("sdpa", "train", 16384, 16384 / 40.0, 400)]
    reason = es.skip_reason(spec, done, timeout_s=600)
    assert reason is not None and "projected" in reason  # 40 s * 4^2 (fit 2.16, clamped to 2) = 640 s > 600 s
    assert es.skip_reason(spec, done, timeout_s=10_000) is None
    failed = [{**done[0], "status": "timeout"}]
    assert "timeout at length 4096" in es.skip_reason(spec, failed, timeout_s=10_000)
    assert es.skip_reason(spec, [], timeout_s=1) is None


def test_parse_args_presets_and_validation():
    args = es.parse_args(["--quick-gpu"])
    assert (args.device, args.dtype, args.impls) == ("cuda", "bf16", ["flex", "chunked", "sdpa"])
    assert (args.lengths, args.train_lengths, args.rev_check) == ([16384, 65536], [16384], False)
    plan = es.build_plan(args)
    assert [(s["impl"], s["mode"], s["length"]) for series in plan for s in series] == [
        (impl, mode, n) for impl in ("flex", "chunked", "sdpa")
        for mode, n in (("inference", 16384), ("inference", 65536), ("train", 16384))
    ]
    cpu = es.parse_args(["--quick-gpu", "--device", "cpu", "--dtype", "fp32", "--lengths", "128", "--chunk", "16"])
    assert (cpu.device, cpu.dtype, cpu.lengths, cpu.train_lengths) == ("cpu", "fp32", [128], [128])
    plain = es.parse_args([])
    assert (plain.device, plain.dtype, plain.impls) == ("cpu", "fp32", ["ours", "hf", "sdpa"])
    full = es.build_plan(es.parse_args([]))
    rev = [s for series in full for s in series if s["series"] == "reversible"]
    assert [(s["n_layers"], s["length"], s["reversible"]) for s in rev] == [(12, 16384, True), (12, 16384, False)]
    with pytest.raises(SystemExit):
        es.parse_args(["--lengths", "1000"])  # not a multiple of --chunk 64
    with pytest.raises(SystemExit):
        es.parse_args(["--impls", "ours,bogus"])


def test_best_of_keeps_the_best_and_respects_the_budget():
    calls = []

    def fn():
        calls.append(1)
        time.sleep(0.01 if len(calls) > 1 else 0.05)

    res = common.best_of(fn, repeats=3, budget_s=10.0)
    assert res["n_timed"] == 3 and len(calls) == 4 and not res["warmup_only"]
    assert res["seconds"] == min(res["times"]) < res["warmup_s"]
    slow = common.best_of(lambda: time.sleep(0.06), repeats=3, budget_s=0.1)
    assert slow["warmup_only"] and slow["n_timed"] == 1


def test_markdown_table_and_formatting():
    table = common.markdown_table(["a", "b"], [["x", 1]], align="lr")
    assert table.splitlines() == ["| a | b |", "| :--- | ---: |", "| x | 1 |"]
    assert common.fmt_ratio(3.0, 1.5) == "2.00x" and common.fmt_ratio(1.0, None) == "–"
    assert common.fmt_num(12345.6) == "12,346"
    assert common.peak_rss_mb() >= common.current_rss_mb() * 0.5 > 0


CHILD = """
import sys, time
sys.path.insert(0, {bench!r})
from _common import child_main
def handler(spec):
    if spec["what"] == "sleep":
        time.sleep(30)
    if spec["what"] == "crash":
        import os; os._exit(3)
    return {{**spec, "status": "ok", "tokens_per_s": 1.0, "peak_mb": 1.0}}
sys.exit(child_main(handler, sys.argv[2]))
"""


def test_run_in_subprocess_ok_timeout_and_crash(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(bench=str(BENCH_DIR)))
    ok = common.run_in_subprocess(script, {"what": "ok"}, timeout_s=30)
    assert ok["status"] == "ok" and ok["wall_s"] > 0
    t0 = time.perf_counter()
    late = common.run_in_subprocess(script, {"what": "sleep"}, timeout_s=1)
    assert late["status"] == "timeout" and time.perf_counter() - t0 < 10
    crash = common.run_in_subprocess(script, {"what": "crash"}, timeout_s=30)
    assert crash["status"] == "error" and "code 3" in crash["note"]


@pytest.mark.slow
def test_main_end_to_end_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = [
        "--impls", "ours,sdpa", "--modes", "inference", "--lengths", "128", "--d-model", "32",
        "--layers", "1", "--heads", "2", "--d-ff", "64", "--chunk", "16", "--hashes", "2",
        "--repeats", "1", "--no-rev-check", "--json", str(out),
    ]
    assert es.main(argv) == 0
    printed = capsys.readouterr().out
    assert "| mode | tokens | ours tok/s |" in printed and "| inference | 128 |" in printed
    data = json.loads(out.read_text())
    rows = data["rows"]
    assert [(r["impl"], r["length"]) for r in rows] == [("ours", 128), ("sdpa", 128)]
    for row in rows:
        assert row["status"] == "ok", row
        assert set(row) >= ROW_KEYS and row["tokens_per_s"] > 0 and row["peak_mb"] > 0
    # the printed table row carries the JSON rows' numbers, in the right columns
    ours, sdpa = rows
    line = next(ln for ln in printed.splitlines() if ln.startswith("| inference | 128 |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[2] == common.fmt_num(ours["tokens_per_s"]) and cells[4] == common.fmt_num(sdpa["tokens_per_s"])
    assert cells[6] == common.fmt_ratio(ours["tokens_per_s"], sdpa["tokens_per_s"])
    assert {"meta", "rows", "checks"} <= set(data)
    assert data["meta"]["lengths"] == [128]


def test_summarise_kernel_table_and_targets():
    rows = [
        _fake("flex", "inference", 16384, 9000, 500, warmup_s=30.0), _fake("chunked", "inference", 16384, 6000, 600),
        _fake("hf", "inference", 16384, 2000, 1500),
        _fake("flex", "train", 16384, 800, 900), _fake("chunked", "train", 16384, 500, 1000),
        _fake("flex", "inference", 65536, 3_300_000, 900, device="cuda"),
        _fake("sdpa", "inference", 65536, 1_000_000, 900, device="cuda"),
    ]
    text, checks = es.summarise(rows)
    assert "| inference | 16,384 | 9,000 | 6,000 | 2,000 | – | 1.50x | 4.50x | – | 500 | 600 | 30 |" in text
    by_name = {c["check"]: c for c in checks}
    assert by_name["inference 16384: tok/s flex/HF >= 3"]["pass"]
    assert not by_name["train 16384: tok/s flex/chunked >= 2"]["pass"]  # 1.6x
    assert by_name["GPU inference 65536: tok/s flex/SDPA >= 2"]["value"] == pytest.approx(3.3)
    assert by_name["GPU inference 65536: seconds per document <= 0.020"]["pass"]  # 65536 / 3.3M = 19.9 ms


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["inference", "train"])
def test_flex_and_chunked_rows_measure_the_kernel_they_name(mode):
    """The quick-GPU script's rows, run on a CPU: the flex row compiles FlexAttention, the chunked row not."""
    from reformer_retrieval.model import flex_lsh

    rows = {impl: es.measure({**TINY, "impl": impl, "mode": mode, "length": 128}) for impl in ("flex", "chunked")}
    assert all(r["status"] == "ok" and r["tokens_per_s"] > 0 for r in rows.values())
    assert es._build_ours({**TINY, "impl": "flex"}, 128).config.attention_impl == "flex"
    assert es._build_ours({**TINY, "impl": "chunked"}, 128).config.attention_impl == "chunked"
    assert flex_lsh.flex_available("cpu")  # the flex row did not fall back


def test_default_shape_builds_the_bundled_models_layout():
    """``--default-shape``: the bundled default model's width, depth, hashes and local / LSH layer pattern."""
    import json

    config = json.loads((BENCH_DIR.parent / "reformer_retrieval" / "assets" / "default" / "config.json").read_text())
    args = es.parse_args(["--default-shape", "--lengths", "1024", "--modes", "train", "--impls", "flex,chunked"])
    assert (args.d_model, args.layers, args.hashes) == (
        config["d_model"], config["n_layers"], config["n_hashes"])
    assert not args.rev_check and args.impls == ["flex", "chunked"]
    spec = es.build_plan(args)[0][0]
    assert spec["attention_layers"] == config["attention_layers"]
    model = es._build_ours(spec, 1024)
    assert model.config.layer_kinds == tuple(config["attention_layers"])
    with pytest.raises(SystemExit):
        es.parse_args(["--default-shape", "--impls", "hf"])


@pytest.mark.parametrize("autocast", [False, True])
def test_autocast_puts_every_call_under_bf16_autocast(monkeypatch, autocast):
    import torch

    seen: list[bool] = []
    real = es._build_ours

    def build(spec, length):
        model = real(spec, length)
        model.register_forward_pre_hook(lambda _m, _a: seen.append(torch.is_autocast_enabled("cpu")))
        return model

    monkeypatch.setattr(es, "_build_ours", build)
    row = es.measure({**TINY, "impl": "ours", "mode": "train", "length": 128, "autocast": autocast})
    assert row["status"] == "ok" and len(seen) >= 2 and set(seen) == {autocast}
    assert es.parse_args(["--autocast"]).autocast and not es.parse_args([]).autocast


def test_compile_train_switches_ours_only(monkeypatch):
    from reformer_retrieval import ReformerEncoder

    seen: list[bool] = []
    monkeypatch.setattr(ReformerEncoder, "compile_attention_for_training",
                        lambda self, enabled=True: seen.append(enabled))
    row = es.measure({**TINY, "impl": "ours", "mode": "train", "length": 128, "compile_train": True})
    assert row["status"] == "ok" and seen == [True]
    es.measure({**TINY, "impl": "sdpa", "mode": "train", "length": 128, "compile_train": True})
    es.measure({**TINY, "impl": "ours", "mode": "train", "length": 128})
    assert seen == [True]  # not for SDPA, nor without the flag
    assert es.parse_args(["--compile-train"]).compile_train and not es.parse_args([]).compile_train
    assert es.build_plan(es.parse_args(["--compile-train", "--impls", "chunked"]))[0][0]["compile_train"]
