"""Encoder speed and memory: our Reformer vs Hugging Face's `ReformerModel` vs exact SDPA attention.

Three encoders with the same width, depth, heads, feed-forward width (and, for the two Reformers, the same
chunk length, hash rounds and all-LSH layers with one chunk before and one after) are timed on one
sequence of 1K..64K random byte tokens: an inference forward (``no_grad``, eval mode) and a training step
(forward + backward of a scalar loss, train mode, dropout 0). Every measurement runs in its own
subprocess, so its peak memory is its own: the peak resident set size on CPU (``VmHWM``, reset after the
model and input are built, so it counts the resident runtime + weights + the workload's peak), and
``torch.cuda.max_memory_allocated`` on GPU. Each measurement is one warm-up call plus up to ``--repeats``
timed calls; the best is reported (the machine may be shared).

Measurements that cannot finish are not run: a series (impl, mode) is extrapolated from its last two
lengths (time ~ L^p, memory ~ L^q, p and q fitted and clamped to [1, 2]) and a length whose projected call
time exceeds ``--timeout`` or whose projected memory exceeds the machine's available memory is reported
as skipped with the reason; ``--timeout`` also kills any measurement that runs over.

Examples::

    python benchmarks/encoder_speed.py --json encoder_speed.json             # full CPU run
    python benchmarks/encoder_speed.py --lengths 1024,4096 --impls ours,sdpa # a quick look
    python benchmarks/encoder_speed.py --quick-gpu --json gpu.json           # H100: flex, chunked, SDPA, bf16
    python benchmarks/encoder_speed.py --impls flex,chunked,hf --lengths 16384 --train-lengths 16384 \
        --threads 2 --no-rev-check                                            # the attention kernels side by side

The extra measurement of the issue (training step, 12 layers, 16K tokens: reversible vs
``reversible=False`` peak memory) runs by default on full runs (``--no-rev-check`` to skip it).

On a shared machine, prefer ``--threads 1``: with two OpenMP threads and other processes on the cores,
every parallel op waits for a descheduled thread, which inflates wall time several-fold and favours
implementations with fewer, larger ops. Rows also carry ``cpu_seconds`` and the machine's ``load_avg``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    available_memory_mb,
    best_of,
    child_main,
    current_rss_mb,
    fmt_num,
    fmt_ratio,
    markdown_table,
    peak_rss_mb,
    reset_peak_rss,
    run_in_subprocess,
    write_json,
)

IMPLS = ("ours", "flex", "chunked", "hf", "sdpa")
DEFAULT_IMPLS = ("ours", "hf", "sdpa")
# ours with its attention kernel forced (``ReformerConfig.attention_impl``); "ours" is the config default
OURS_KERNELS = {"ours": "auto", "flex": "flex", "chunked": "chunked"}
MODES = ("inference", "train")
IMPL_LABELS = {
    "ours": "ours", "flex": "ours (FlexAttention)", "chunked": "ours (chunked: fused / masked)", "hf": "HF Reformer",
    "sdpa": "SDPA exact",
}
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
VOCAB = 260  # ByteTokenizer: 256 bytes + 4 specials
FIRST_REAL_ID = 4

__all__ = ["build_plan", "main", "measure", "summarise"]


# ============================================================================================ models
def axial_shape(length: int) -> tuple[int, int]:
    """``(n1, n2)`` with ``n1 * n2 == length`` and ``n1 <= n2`` as close to square as possible."""
    n1 = math.isqrt(length)
    while length % n1:
        n1 -= 1
    return n1, length // n1


def _build_ours(spec: dict[str, Any], length: int) -> Any:
    from reformer_retrieval import ReformerConfig, ReformerEncoder

    config = ReformerConfig(
        d_model=spec["d_model"],
        n_layers=spec["n_layers"],
        n_heads=spec["n_heads"],
        d_ff=spec["d_ff"],
        embedding_dim=spec["d_model"],
        chunk_size=spec["chunk"],
        n_hashes=spec["n_hashes"],
        max_len=length,
        axial_pos_shape=axial_shape(length),
        chunks_before=1,
        chunks_after=1,
        dropout=0.0,
        attention_dropout=0.0,
        reversible=spec["reversible"],
        attention_impl=OURS_KERNELS[spec.get("impl", "ours")],
        attention_layers=tuple(spec["attention_layers"]) if spec.get("attention_layers") else None,
    )
    return ReformerEncoder(config)


def _build_hf(spec: dict[str, Any], length: int) -> Any:
    from transformers import ReformerConfig as HFConfig
    from transformers import ReformerModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the "num_buckets is not set" warning on every first call
    d = spec["d_model"]
    config = HFConfig(
        vocab_size=VOCAB,
        pad_token_id=0,
        hidden_size=d,
        num_attention_heads=spec["n_heads"],
        attention_head_size=d // spec["n_heads"],
        feed_forward_size=spec["d_ff"],
        hidden_act="gelu",
        attn_layers=["lsh"] * spec["n_layers"],
        lsh_attn_chunk_length=spec["chunk"],
        local_attn_chunk_length=spec["chunk"],
        num_hashes=spec["n_hashes"],
        lsh_num_chunks_before=1,
        lsh_num_chunks_after=1,
        num_buckets=None,
        hash_seed=0,
        is_decoder=False,
        axial_pos_embds=True,
        axial_pos_shape=list(axial_shape(length)),
        axial_pos_embds_dim=[d // 2, d - d // 2],
        max_position_embeddings=length,
        hidden_dropout_prob=0.0,
        lsh_attention_probs_dropout_prob=0.0,
        local_attention_probs_dropout_prob=0.0,
        chunk_size_feed_forward=0,
        use_cache=False,
    )
    return ReformerModel(config)


def _build_sdpa(spec: dict[str, Any], length: int) -> Any:
    import torch
    import torch.nn.functional as F
    from torch import nn

    class ExactLayer(nn.Module):
        """Pre-norm transformer layer: SDPA self-attention + GELU feed-forward."""

        def __init__(self, d: int, heads: int, d_ff: int) -> None:
            super().__init__()
            self.heads = heads
            self.norm1 = nn.LayerNorm(d)
            self.qkv = nn.Linear(d, 3 * d, bias=False)
            self.out = nn.Linear(d, d)
            self.norm2 = nn.LayerNorm(d)
            self.ff_in = nn.Linear(d, d_ff)
            self.ff_out = nn.Linear(d_ff, d)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            B, L, d = x.shape
            q, k, v = self.qkv(self.norm1(x)).view(B, L, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
            att = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, L, d)
            x = x + self.out(att)
            return x + self.ff_out(F.gelu(self.ff_in(self.norm2(x))))

    class ExactAttentionEncoder(nn.Module):
        """Token + axial positions -> pre-norm SDPA transformer -> LayerNorm -> mean pool -> project."""

        def __init__(self) -> None:
            super().__init__()
            d = spec["d_model"]
            n1, n2 = axial_shape(length)
            self.tokens = nn.Embedding(VOCAB, d)
            self.pos_row = nn.Parameter(torch.randn(n1, d // 2) * 0.02)
            self.pos_col = nn.Parameter(torch.randn(n2, d - d // 2) * 0.02)
            self.layers = nn.ModuleList(
                [ExactLayer(d, spec["n_heads"], spec["d_ff"]) for _ in range(spec["n_layers"])]
            )
            self.norm = nn.LayerNorm(d)
            self.projection = nn.Linear(d, d)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            n1, n2 = self.pos_row.shape[0], self.pos_col.shape[0]
            pos = torch.cat(
                [self.pos_row[:, None].expand(n1, n2, -1), self.pos_col[None].expand(n1, n2, -1)], dim=-1
            ).reshape(n1 * n2, -1)[: ids.shape[1]]
            x = self.tokens(ids) + pos
            for layer in self.layers:
                x = layer(x)
            return F.normalize(self.projection(self.norm(x).mean(dim=1)), dim=-1)

    return ExactAttentionEncoder()


# ============================================================================================ measurement
def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one measurement in this process and return its row.

    Args:
        spec: ``impl`` (ours | hf | sdpa), ``mode`` (inference | train), ``length``, ``device``, ``dtype``
            (fp32 | bf16 | fp16), ``d_model``, ``n_layers``, ``n_heads``, ``d_ff``, ``chunk``, ``n_hashes``,
            ``reversible`` (ours only), ``repeats``, ``budget_s``, ``seed``, ``threads`` (0 = torch default).

    Returns:
        ``spec`` plus ``status="ok"``, ``tokens_per_s``, ``peak_mb`` (peak RSS on CPU, peak allocated on
        CUDA), ``base_mb`` (the same measure just before the first call), ``seconds`` (best call),
        ``cpu_seconds`` (process CPU time of that call), ``warmup_s``, ``n_timed``, ``warmup_only``,
        ``n_params``, ``torch``, ``threads_used``, ``load_avg`` (1-minute load average at the end, CPU).
    """
    import torch

    if spec["impl"] not in IMPLS or spec["mode"] not in MODES:
        raise ValueError(f"unknown impl/mode {spec['impl']!r}/{spec['mode']!r}; expected {IMPLS} / {MODES}")
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    device = torch.device(spec["device"])
    dtype = getattr(torch, DTYPES[spec["dtype"]])
    length = int(spec["length"])
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise RuntimeError("--device cuda but torch.cuda.is_available() is False")

    builder = {"hf": _build_hf, "sdpa": _build_sdpa}.get(spec["impl"], _build_ours)
    model = builder(spec, length).to(device=device, dtype=dtype)
    if spec.get("compile_train") and spec["impl"] in OURS_KERNELS:  # its compile falls in the warm-up
        model.compile_attention_for_training(True)
    gen = torch.Generator().manual_seed(int(spec.get("seed", 0)))
    batch = int(spec.get("batch", 1))
    ids = torch.randint(FIRST_REAL_ID, VOCAB, (batch, length), generator=gen).to(device)
    mask = torch.ones_like(ids)
    training = spec["mode"] == "train"
    model.train(training)
    params = [p for p in model.parameters() if p.requires_grad]

    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if spec.get("autocast")
                else contextlib.nullcontext())

    def forward() -> Any:
        with autocast:
            return _call()

    def _call() -> Any:
        if spec["impl"] in OURS_KERNELS:
            return model(ids, mask)
        if spec["impl"] == "hf":
            return model(input_ids=ids, attention_mask=mask).last_hidden_state
        return model(ids)

    def step() -> None:
        if training:
            for p in params:
                p.grad = None
            forward().float().sum().backward()
        else:
            with torch.no_grad():
                forward()

    sync = torch.cuda.synchronize if cuda else None
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device) / 2**20
    else:
        reset_peak_rss()
        base = current_rss_mb()
    timing = best_of(step, repeats=int(spec["repeats"]), budget_s=float(spec["budget_s"]), sync=sync)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else peak_rss_mb()
    return {
        **spec,
        "status": "ok",
        "tokens_per_s": round(batch * length / timing["seconds"], 1),
        "peak_mb": round(peak, 1),
        "base_mb": round(base, 1),
        "seconds": float(f"{timing['seconds']:.6g}"),
        "cpu_seconds": round(timing["cpu_seconds"], 4),
        "warmup_s": round(timing["warmup_s"], 4),
        "n_timed": timing["n_timed"],
        "warmup_only": timing["warmup_only"],
        "n_params": sum(p.numel() for p in model.parameters()),
        "torch": torch.__version__,
        "threads_used": torch.get_num_threads(),
        "load_avg": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "note": spec.get("note", ""),
    }


# ============================================================================================ plan
def _spec(args: argparse.Namespace, impl: str, mode: str, length: int, **over: Any) -> dict[str, Any]:
    spec = {
        "impl": impl,
        "mode": mode,
        "length": length,
        "device": args.device,
        "dtype": args.dtype,
        "d_model": args.d_model,
        "n_layers": args.layers,
        "n_heads": args.heads,
        "d_ff": args.d_ff,
        "chunk": args.chunk,
        "n_hashes": args.hashes,
        "reversible": True,
        "repeats": args.repeats,
        "budget_s": args.budget,
        "seed": args.seed,
        "threads": args.threads,
        "batch": args.batch,
        "autocast": args.autocast,
        "compile_train": args.compile_train,
        "series": "main",
    }
    if args.attention_layers:
        spec["attention_layers"] = list(args.attention_layers)
    spec.update(over)
    return spec


def build_plan(args: argparse.Namespace) -> list[list[dict[str, Any]]]:
    """The measurements as series (lists run in order, shortest length first, for extrapolation)."""
    series: list[list[dict[str, Any]]] = []
    for impl in args.impls:
        for mode in args.modes:
            lengths = args.lengths if mode == "inference" else args.train_lengths
            if lengths:
                series.append([_spec(args, impl, mode, n) for n in sorted(lengths)])
    if args.rev_check:
        for rev in (True, False):
            series.append(
                [
                    _spec(
                        args, "ours", "train", args.rev_length, n_layers=args.rev_layers, reversible=rev,
                        series="reversible",
                    )
                ]
            )
    return series


def _fit_exponent(done: list[dict[str, Any]], key: str, default: float, base_key: str | None = None) -> float:
    """Growth exponent of ``key`` over the last two measured lengths, clamped to [1, 2]."""
    if len(done) < 2:
        return default
    a, b = done[-2], done[-1]
    ya, yb = a[key], b[key]
    if base_key is not None:
        ya, yb = ya - a[base_key], yb - b[base_key]
    if ya <= 0 or yb <= 0 or b["length"] == a["length"]:
        return default
    return min(2.0, max(1.0, math.log(yb / ya) / math.log(b["length"] / a["length"])))


def skip_reason(spec: dict[str, Any], done: list[dict[str, Any]], timeout_s: float) -> str | None:
    """Why ``spec`` should not be run given the series' earlier rows, or None to run it."""
    failed = [r for r in done if r["status"] in ("timeout", "error")]
    if failed:
        return f"{failed[0]['status']} at length {failed[0]['length']}"
    ok = [r for r in done if r["status"] == "ok"]
    if not ok:
        return None
    last = ok[-1]
    ratio = spec["length"] / last["length"]
    p = _fit_exponent(ok, "seconds", 2.0 if spec["impl"] == "sdpa" else 1.0)
    projected_s = last["seconds"] * ratio**p
    if projected_s > timeout_s:
        return (
            f"projected {projected_s:,.0f} s per call (O(L^{p:.2f}) from {last['length']}) "
            f"> --timeout {timeout_s:.0f} s"
        )
    if spec["device"] == "cpu":
        q = _fit_exponent(ok, "peak_mb", 1.0, base_key="base_mb")
        projected_mb = last["base_mb"] + (last["peak_mb"] - last["base_mb"]) * ratio**q
        avail = available_memory_mb()
        if avail is not None and projected_mb > 0.9 * avail:
            return f"projected peak {projected_mb:,.0f} MB > 90% of available {avail:,.0f} MB"
    return None


# ============================================================================================ report
def _find(rows: list[dict[str, Any]], **key: Any) -> dict[str, Any] | None:
    for row in rows:
        if row.get("status") == "ok" and all(row.get(k) == v for k, v in key.items()):
            return row
    return None


def _val(row: dict[str, Any] | None, key: str) -> float | None:
    return None if row is None else row.get(key)


def summarise(rows: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """Markdown report (comparison table, notes, reversible table, target checks) and the checks."""
    main_rows = [r for r in rows if r.get("series") == "main"]
    out: list[str] = []
    table = []
    for mode in MODES:
        for length in sorted({r["length"] for r in main_rows if r["mode"] == mode}):
            o, h, s = (_find(main_rows, impl=i, mode=mode, length=length) for i in ("ours", "hf", "sdpa"))
            table.append(
                [
                    mode,
                    f"{length:,}",
                    fmt_num(_val(o, "tokens_per_s")),
                    fmt_num(_val(h, "tokens_per_s")),
                    fmt_num(_val(s, "tokens_per_s")),
                    fmt_ratio(_val(o, "tokens_per_s"), _val(h, "tokens_per_s")),
                    fmt_ratio(_val(o, "tokens_per_s"), _val(s, "tokens_per_s")),
                    fmt_num(_val(o, "peak_mb")),
                    fmt_num(_val(h, "peak_mb")),
                    fmt_num(_val(s, "peak_mb")),
                    fmt_ratio(_val(o, "peak_mb"), _val(h, "peak_mb")),
                    fmt_ratio(_val(o, "peak_mb"), _val(s, "peak_mb")),
                ]
            )
    headers = [
        "mode", "tokens", "ours tok/s", "HF tok/s", "SDPA tok/s", "speed vs HF", "speed vs SDPA",
        "ours peak MB", "HF peak MB", "SDPA peak MB", "mem vs HF", "mem vs SDPA",
    ]
    if table:
        out.append(markdown_table(headers, table, align="llrrrrrrrrrr"))
    kernel_table = []
    for mode in MODES:
        for length in sorted({r["length"] for r in main_rows if r["mode"] == mode}):
            f, c, h, s = (_find(main_rows, impl=i, mode=mode, length=length) for i in ("flex", "chunked", "hf", "sdpa"))
            if f is None and c is None:
                continue
            kernel_table.append([
                mode, f"{length:,}", fmt_num(_val(f, "tokens_per_s")), fmt_num(_val(c, "tokens_per_s")),
                fmt_num(_val(h, "tokens_per_s")), fmt_num(_val(s, "tokens_per_s")),
                fmt_ratio(_val(f, "tokens_per_s"), _val(c, "tokens_per_s")),
                fmt_ratio(_val(f, "tokens_per_s"), _val(h, "tokens_per_s")),
                fmt_ratio(_val(f, "tokens_per_s"), _val(s, "tokens_per_s")),
                fmt_num(_val(f, "peak_mb")), fmt_num(_val(c, "peak_mb")), fmt_num(_val(f, "warmup_s")),
            ])
    if kernel_table:
        out.append(
            "\nAttention kernels (ours, same model; flex warm-up includes its compile):\n"
            + markdown_table(
                ["mode", "tokens", "flex tok/s", "chunked tok/s", "HF tok/s", "SDPA tok/s", "flex vs chunked",
                 "flex vs HF", "flex vs SDPA", "flex peak MB", "chunked peak MB", "flex warm-up s"],
                kernel_table, align="llrrrrrrrrrr",
            )
        )
    notes = [
        f"- {IMPL_LABELS.get(r['impl'], r['impl'])} {r['mode']} {r['length']:,}: {r['status']}: {r.get('note', '')}"
        for r in rows
        if r.get("status") != "ok"
    ]
    if notes:
        out.append("\nNot measured:\n" + "\n".join(notes))

    rev = _find(rows, series="reversible", reversible=True)
    plain = _find(rows, series="reversible", reversible=False)
    rev_specs = [r for r in rows if r.get("series") == "reversible"]
    if rev_specs:
        layers, length = rev_specs[0]["n_layers"], rev_specs[0]["length"]
        rev_table = []
        for label, r in (("reversible", rev), ("reversible=False", plain)):
            rev_table.append(
                [
                    label,
                    fmt_num(_val(r, "tokens_per_s")),
                    fmt_num(_val(r, "peak_mb")),
                    fmt_num(None if r is None else r["peak_mb"] - r["base_mb"]),
                ]
            )
        out.append(
            f"\nTraining step, ours, {layers} layers, {length:,} tokens:\n"
            + markdown_table(["stack", "tok/s", "peak MB", "peak above base MB"], rev_table)
        )

    checks: list[dict[str, Any]] = []

    def check(name: str, value: float | None, limit: float, higher_is_better: bool) -> None:
        if value is None:
            return
        ok = value >= limit if higher_is_better else value <= limit
        checks.append({"check": name, "value": round(value, 3), "target": limit, "pass": ok})

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None or b == 0 else a / b

    for length in (16384, 65536):
        o, h = (_find(main_rows, impl=i, mode="inference", length=length) for i in ("ours", "hf"))
        check(f"inference {length}: tok/s ours/HF >= 3", ratio(_val(o, "tokens_per_s"), _val(h, "tokens_per_s")), 3.0, True)
        check(f"inference {length}: peak ours/HF <= 0.5", ratio(_val(o, "peak_mb"), _val(h, "peak_mb")), 0.5, False)
    o, s = (_find(main_rows, impl=i, mode="inference", length=65536) for i in ("ours", "sdpa"))
    check("inference 65536: tok/s ours/SDPA >= 5", ratio(_val(o, "tokens_per_s"), _val(s, "tokens_per_s")), 5.0, True)
    a, b = (_find(main_rows, impl="ours", mode="inference", length=n) for n in (16384, 65536))
    check("inference peak growth 16K->64K <= 4.5x", ratio(_val(b, "peak_mb"), _val(a, "peak_mb")), 4.5, False)
    check("train peak reversible/plain <= 0.5", ratio(_val(rev, "peak_mb"), _val(plain, "peak_mb")), 0.5, False)
    for length in (16384, 65536):
        f, h = (_find(main_rows, impl=i, mode="inference", length=length) for i in ("flex", "hf"))
        check(f"inference {length}: tok/s flex/HF >= 3", ratio(_val(f, "tokens_per_s"), _val(h, "tokens_per_s")), 3.0, True)
    f, c = (_find(main_rows, impl=i, mode="train", length=16384) for i in ("flex", "chunked"))
    check("train 16384: tok/s flex/chunked >= 2", ratio(_val(f, "tokens_per_s"), _val(c, "tokens_per_s")), 2.0, True)
    gpu = [r for r in main_rows if str(r.get("device", "")).startswith("cuda")]
    f, s = (_find(gpu, impl=i, mode="inference", length=65536) for i in ("flex", "sdpa"))
    check("GPU inference 65536: tok/s flex/SDPA >= 2", ratio(_val(f, "tokens_per_s"), _val(s, "tokens_per_s")), 2.0, True)
    check("GPU inference 65536: seconds per document <= 0.020", _val(f, "seconds"), 0.020, False)
    if checks:
        out.append(
            "\nTargets:\n"
            + markdown_table(
                ["target", "measured", "pass"],
                [[c["check"], f"{c['value']:.2f}", "yes" if c["pass"] else "NO"] for c in checks],
                align="lrc",
            )
        )
    return "\n".join(out), checks


# ============================================================================================ CLI
def _ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"lengths must be positive, got {text!r}")
    return values


def _choices(allowed: tuple[str, ...]) -> Any:
    def parse(text: str) -> list[str]:
        values = [x.strip() for x in text.split(",") if x.strip()]
        bad = [v for v in values if v not in allowed]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {','.join(allowed)}")
        return values

    return parse


def _apply_default_shape(args: argparse.Namespace) -> None:
    """Take the model shape from the bundled default model's config (``--default-shape``)."""
    import json

    from reformer_retrieval.encode import DEFAULT_MODEL_DIR

    config = json.loads((Path(DEFAULT_MODEL_DIR) / "config.json").read_text())
    args.d_model, args.layers, args.heads = config["d_model"], config["n_layers"], config["n_heads"]
    args.d_ff, args.chunk, args.hashes = config["d_ff"], config["chunk_size"], config["n_hashes"]
    args.attention_layers = config.get("attention_layers")
    bad = [i for i in (args.impls or []) if i not in OURS_KERNELS]
    if bad:
        raise SystemExit(f"--default-shape measures ours only, not {bad}")
    args.impls = args.impls or ["ours"]
    args.rev_check = bool(args.rev_check)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--impls", type=_choices(IMPLS), default=None,
                   help="comma list of ours,flex,chunked,hf,sdpa (default ours,hf,sdpa; flex / chunked: ours with "
                        "that attention kernel forced)")
    p.add_argument("--modes", type=_choices(MODES), default=list(MODES), help="comma list of inference,train")
    p.add_argument("--lengths", type=_ints, default=None, help="inference lengths (default 1K,4K,16K,64K)")
    p.add_argument("--train-lengths", type=_ints, default=None, help="training lengths (default: --lengths)")
    p.add_argument("--device", default=None, help="cpu or cuda (default cpu; cuda with --quick-gpu)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="fp32 (default) or bf16 / fp16")
    p.add_argument("--compile-train", action="store_true",
                   help="ours: run the training forward's attention through the inductor-compiled chunked path "
                   "(reformer_retrieval.model.compiled_training; the compile falls in the warm-up, see warmup_s)")
    p.add_argument("--autocast", action="store_true",
                   help="run each call under bfloat16 autocast (weights in --dtype fp32): mixed-precision training "
                        "as the trainers run it, on CPUs with bf16 matrix units (AMX) as on CUDA")
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--d-ff", type=int, default=512)
    p.add_argument("--chunk", type=int, default=64)
    p.add_argument("--hashes", type=int, default=4)
    p.add_argument("--repeats", type=int, default=2, help="timed calls after the warm-up (best is kept)")
    p.add_argument("--budget", type=float, default=120.0, help="seconds of calls per measurement")
    p.add_argument("--runs", type=int, default=1, help="subprocesses per measurement (best is kept)")
    p.add_argument("--timeout", type=float, default=600.0, help="kill a measurement after this many seconds")
    p.add_argument("--no-skip", action="store_true", help="run even measurements projected to time out")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=1, help="sequences per call (tok/s counts all of them)")
    p.add_argument("--default-shape", action="store_true",
                   help="ours only: the bundled default model's shape (width, depth, heads, feed-forward, chunk, "
                        "hashes, local / LSH layer pattern) instead of the --d-model ... flags")
    p.add_argument("--rev-check", dest="rev_check", action="store_true", default=None,
                   help="also measure the training step reversible vs reversible=False (default on)")
    p.add_argument("--no-rev-check", dest="rev_check", action="store_false")
    p.add_argument("--rev-layers", type=int, default=12)
    p.add_argument("--rev-length", type=int, default=16384)
    p.add_argument("--quick-gpu", action="store_true",
                   help="preset: cuda, bf16, flex+chunked+sdpa, inference 16K/64K, training 16K, 1 warm-up + "
                        "2 calls (--device / --dtype / --lengths / --train-lengths / --impls given explicitly win: "
                        "'--quick-gpu --device cpu --dtype fp32 --lengths 4096' tests the script on a CPU)")
    p.add_argument("--json", type=Path, default=None, help="write the rows and checks to this JSON file")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick_gpu:
        args.device = args.device or "cuda"
        args.dtype = args.dtype or "bf16"
        args.impls = args.impls or ["flex", "chunked", "sdpa"]
        args.modes = list(MODES)
        args.train_lengths = args.train_lengths or ([16384] if args.lengths is None else list(args.lengths[:1]))
        args.lengths = args.lengths or [16384, 65536]
        args.budget = min(args.budget, 20.0)
        args.timeout = min(args.timeout, 120.0)
        args.rev_check = bool(args.rev_check)
    args.attention_layers = None
    if args.default_shape:
        _apply_default_shape(args)
    args.device = args.device or "cpu"
    args.dtype = args.dtype or "fp32"
    args.impls = args.impls or list(DEFAULT_IMPLS)
    args.lengths = args.lengths or [1024, 4096, 16384, 65536]
    if args.train_lengths is None:
        args.train_lengths = list(args.lengths)
    if args.rev_check is None:
        args.rev_check = True
    for n in [*args.lengths, *args.train_lengths, *([args.rev_length] if args.rev_check else [])]:
        if n % args.chunk:
            p.error(f"length {n} is not a multiple of --chunk {args.chunk} (HF Reformer training requires it)")
    if args.d_model % args.heads or args.d_model % 2:
        p.error(f"--d-model {args.d_model} must be even and divisible by --heads {args.heads}")
    return args


def run_plan(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Run every measurement of the plan in its own subprocess; returns the rows."""
    from tqdm import tqdm

    plan = build_plan(args)
    rows: list[dict[str, Any]] = []
    extra_env = {"TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false"}
    with tqdm(total=sum(len(s) for s in plan), desc="measurements", unit="run", file=sys.stderr) as bar:
        for series in plan:
            done: list[dict[str, Any]] = []
            for spec in series:
                bar.set_postfix_str(f"{spec['impl']} {spec['mode']} {spec['length']}")
                reason = None if args.no_skip else skip_reason(spec, done, args.timeout)
                if reason is not None:
                    row = {**spec, "status": "skipped", "note": reason}
                else:
                    tries = [
                        run_in_subprocess(__file__, spec, args.timeout, extra_env) for _ in range(max(1, args.runs))
                    ]
                    good = [r for r in tries if r.get("status") == "ok"]
                    row = max(good, key=lambda r: r["tokens_per_s"]) if good else tries[0]
                    if good:
                        row["runs"] = len(tries)
                done.append(row)
                rows.append(row)
                tps = row.get("tokens_per_s")
                bar.write(
                    f"{spec['impl']:>5} {spec['mode']:<9} L={spec['length']:>6} layers={spec['n_layers']:>2} "
                    f"rev={spec['reversible']!s:<5} {row['status']:<7} "
                    + (f"{tps:>10,.0f} tok/s {row['peak_mb']:>9,.0f} MB" if tps is not None else row.get("note", "")),
                    file=sys.stderr,
                )
                bar.update(1)
    return rows


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    args = parse_args(argv)
    if args.child is not None:
        return child_main(measure, args.child)
    rows = run_plan(args)
    report, checks = summarise(rows)
    header = (
        f"Encoder speed: batch {args.batch}, d_model {args.d_model}, {args.layers} layers, {args.heads} heads, d_ff {args.d_ff}, "
        f"chunk {args.chunk}, {args.hashes} hashes, "
        + (f"layers {','.join(args.attention_layers)} (the default model's shape)" if args.attention_layers
           else "all layers LSH (Reformers)")
        + f", device {args.device}, {args.dtype}{' weights under bf16 autocast' if args.autocast else ''}"
        + f"{', compiled training attention' if args.compile_train else ''}. "
        f"Best of up to {args.repeats} timed calls after a warm-up (a warm-up longer than {args.budget / 2:.0f} s "
        f"is the measurement), best of {args.runs} process(es). Peak memory: "
        + (
            "max_memory_allocated."
            if args.device.startswith("cuda")
            else "peak RSS of the measurement's own process (torch runtime + weights + workload)."
        )
    )
    loads = [r["load_avg"] for r in rows if r.get("load_avg") is not None]
    header += f" Torch threads: {args.threads or 'torch default'}"
    if loads:
        header += f"; 1-minute load average of the machine during the measurements: {min(loads):.1f}-{max(loads):.1f}"
    print(header + ".\n\n" + report)
    if args.json is not None:
        meta = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "child"}
        write_json(args.json, {"meta": meta, "rows": rows, "checks": checks})
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
