"""What FlexAttention's compilation costs a user: first `encode` with a cold and a warm inductor cache.

Each measurement runs in a fresh process (the compiled kernels of one process never help the next except
through inductor's on-disk cache, ``TORCHINDUCTOR_CACHE_DIR``):

* ``sample``: the first ``Encoder.encode`` of every text of ``examples/sample.parquet`` with the bundled
  default model, its attention forced to ``flex`` (cold cache: a new empty directory; warm: the same
  directory again, in a new process) and to ``chunked`` (no compilation) for reference;
* ``mixed``: a corpus of random-letter documents of mixed lengths, log-uniform from ``--min-len`` to
  ``--max-len`` tokens (seeded), the same three ways.

Each row reports the wall time of the first ``encode`` call, the time of a second call on the same texts
in the same process (everything compiled), the number of compiled graphs (dynamo's ``unique_graphs``) and
the distinct padded lengths the kernel ran at (`reformer_retrieval.model.flex_lsh.padded_length`: lengths
are padded to powers of two and the rows ride in a dynamic batch dimension, so a corpus compiles once per
padded length at most).

Examples::

    python benchmarks/compile_cost.py --json compile_cost.json
    python benchmarks/compile_cost.py --corpora mixed --docs 12 --max-len 65536
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import child_main, fmt_num, markdown_table, run_in_subprocess, write_json

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "sample.parquet"
CORPORA = ("sample", "mixed")
RUNS = ("flex, cold cache", "flex, warm cache", "chunked")

__all__ = ["main", "measure", "mixed_lengths", "summarise"]


def mixed_lengths(n: int, lo: int, hi: int, seed: int) -> list[int]:
    """``n`` document lengths, log-uniform in ``[lo, hi]``, always including both ends (seeded)."""
    if n < 2 or not 0 < lo <= hi:
        raise ValueError(f"need n >= 2 and 0 < lo <= hi, got n={n}, lo={lo}, hi={hi}")
    rng = random.Random(seed)
    inner = [round(math.exp(rng.uniform(math.log(lo), math.log(hi)))) for _ in range(n - 2)]
    return [lo, *inner, hi]


def _texts(spec: dict[str, Any]) -> list[str]:
    if spec["corpus"] == "sample":
        import pyarrow.parquet as pq

        return [str(t) for t in pq.read_table(SAMPLE, columns=["text"]).column("text").to_pylist()]
    rng = random.Random(spec["seed"])
    letters = "abcdefghijklmnopqrstuvwxyz     "
    return ["".join(rng.choices(letters, k=n)) for n in spec["lengths"]]


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """One fresh-process measurement: first and second ``encode`` of the corpus with ``spec["impl"]``."""
    import torch
    from torch._dynamo.utils import counters

    from reformer_retrieval.encode import Encoder
    from reformer_retrieval.model import flex_lsh
    from reformer_retrieval.model.lsh_attention import LSHSelfAttention

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    texts = _texts(spec)
    t0 = time.perf_counter()
    enc = Encoder.load(device="cpu")
    load_s = time.perf_counter() - t0
    for module in enc.model.modules():
        if isinstance(module, LSHSelfAttention):
            module.attention_impl = spec["impl"]
    lengths: set[int] = set()
    original = flex_lsh.padded_length

    def recording(length: int, chunk: int) -> int:
        out = original(length, chunk)
        lengths.add(out)
        return out

    flex_lsh.padded_length = recording
    t0 = time.perf_counter()
    first = enc.encode(texts)
    first_s = time.perf_counter() - t0
    graphs = counters["stats"]["unique_graphs"]
    t0 = time.perf_counter()
    second = enc.encode(texts)
    second_s = time.perf_counter() - t0
    tokens = sum(min(len(t.encode("utf-8")), enc.max_tokens) for t in texts)
    return {
        **spec,
        "status": "ok",
        "docs": len(texts),
        "tokens": tokens,
        "load_s": round(load_s, 2),
        "first_encode_s": round(first_s, 2),
        "second_encode_s": round(second_s, 2),
        "compiled_graphs": int(graphs),
        "recompiled_on_second_call": int(counters["stats"]["unique_graphs"] - graphs),
        "padded_lengths": sorted(lengths),
        "flex_failed": not flex_lsh.flex_available("cpu"),
        "same_vectors": bool(abs(first - second).max() < 1e-5),
        "torch": torch.__version__,
    }


def summarise(rows: list[dict[str, Any]]) -> str:
    """Markdown table of the rows."""
    table = []
    for r in rows:
        if r.get("status") != "ok":
            table.append([r["corpus"], r["run"], "–", "–", "–", "–", "–", r.get("note", r.get("status", ""))])
            continue
        table.append([
            r["corpus"], r["run"], f"{r['docs']:,} / {r['tokens']:,}", fmt_num(r["first_encode_s"], 1),
            fmt_num(r["second_encode_s"], 1), str(r["compiled_graphs"]), str(len(r["padded_lengths"])),
            "flex failed: chunked path" if r["flex_failed"] else "",
        ])
    return markdown_table(
        ["corpus", "run", "docs / tokens", "first encode s", "second encode s", "compiled graphs",
         "padded lengths", "note"],
        table, align="llrrrrrl",
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--corpora", default="sample,mixed", help="comma list of sample,mixed")
    p.add_argument("--docs", type=int, default=12, help="documents of the mixed corpus")
    p.add_argument("--min-len", type=int, default=100)
    p.add_argument("--max-len", type=int, default=65_536)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch threads (0 = torch default)")
    p.add_argument("--timeout", type=float, default=900.0, help="kill a measurement after this many seconds")
    p.add_argument("--json", type=Path, default=None, help="write the rows to this JSON file")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.corpora = [c.strip() for c in args.corpora.split(",") if c.strip()]
    bad = [c for c in args.corpora if c not in CORPORA]
    if bad:
        p.error(f"unknown corpora {bad}; choose from {','.join(CORPORA)}")
    if args.child is None:
        try:
            mixed_lengths(args.docs, args.min_len, args.max_len, args.seed)
        except ValueError as exc:
            p.error(str(exc))
    return args


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    args = parse_args(argv)
    if args.child is not None:
        return child_main(measure, args.child)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="compile_cost_") as tmp:
        for corpus in args.corpora:
            cache = Path(tmp) / f"inductor_{corpus}"  # empty: the cold run fills it, the warm run reads it
            spec = {"corpus": corpus, "seed": args.seed, "threads": args.threads}
            if corpus == "mixed":
                spec["lengths"] = mixed_lengths(args.docs, args.min_len, args.max_len, args.seed)
            for run, impl in zip(RUNS, ("flex", "flex", "chunked")):
                env = {"TORCHINDUCTOR_CACHE_DIR": str(cache), "TOKENIZERS_PARALLELISM": "false"}
                row = run_in_subprocess(__file__, {**spec, "run": run, "impl": impl}, args.timeout, env)
                rows.append(row)
                print(f"{corpus:>6} {run:<17} {row.get('status')}: first {row.get('first_encode_s')} s, "
                      f"second {row.get('second_encode_s')} s, {row.get('compiled_graphs')} graphs",
                      file=sys.stderr, flush=True)
    print(
        f"Compile cost: fresh process per row, default model, CPU, {args.threads or 'default'} threads, "
        f"load average {os.getloadavg()[0]:.1f} at the end.\n\n" + summarise(rows)
    )
    if args.json is not None:
        write_json(args.json, {"meta": {k: str(v) for k, v in vars(args).items() if k != "child"}, "rows": rows})
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
