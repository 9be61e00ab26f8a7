"""Encoding on Ray (`encode_dataset`) against `Encoder.encode` at equal cores: overhead and bit equality.

The first ``--docs`` documents of the wiki_versions dev set (``../shared/data/dev/wiki_versions``; skipped
with a message when absent) are encoded with the bundled model (or ``--model``), no truncation below the
model's limit, in batches of ``--batch-size`` rows:

* ``local``: one process, ``torch.set_num_threads(--cpus)``, ``Encoder.encode`` on each batch in turn;
* ``ray``: ``ray.init(num_cpus=--cpus)``, the documents as a ``ray.data.Dataset`` read from a Parquet file
  (`reformer_retrieval.ray_read.read_corpus`, blocks of one batch, reads reserving no CPU, as
  ``encode --engine ray`` reads), then ``encode_dataset`` with ``--cpus`` encoder actors (one CPU and one
  torch thread each), every embedding brought back to the driver in order.

Each runs in a fresh child process. Reported: wall seconds of the encoding (Ray: from building the dataset to
the last embedding on the driver, actor start and model load included; ``ray.init`` apart), the overhead
``ray / local - 1`` (issue 15 target: at most 0.15), where Ray's time goes (``startup_s``: the same pipeline
on ``--cpus`` one-row batches, i.e. actor start + model load + scheduling), and whether the embeddings are
equal bit for bit (the same rows in the same batches; each actor runs one torch thread, the local process
``--cpus``, so bits can differ only if the kernels' results depend on the thread count).

On the shared 2-core machine (first 400 of the 2,504 documents, batches of 8, about 4 minutes in all):
Encoder.encode 102.2 s, Ray 107.8 s (+5.6%; Ray's startup 4.3 s of it), embeddings bit-equal. On 96
documents the same startup made it +22%.

Examples:
    python benchmarks/ray_encode_overhead.py                   # 400 documents, 2 CPUs, table
    python benchmarks/ray_encode_overhead.py --docs 96 --json ray_overhead.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import child_main, fmt_num, markdown_table, run_in_subprocess, write_json

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "dev" / "wiki_versions" / "corpus.parquet"


def _subset(data: str, docs: int, out: Path) -> Path:
    """The first ``docs`` rows (id, text) of the corpus, as one Parquet file."""
    import pyarrow.parquet as pq

    table = pq.read_table(data, columns=["id", "text"]).slice(0, docs)
    pq.write_table(table, out)
    return out


def _batches(texts: list[str], size: int) -> list[list[str]]:
    return [texts[s:s + size] for s in range(0, len(texts), size)]


def run_local(spec: dict[str, Any]) -> dict[str, Any]:
    """Child: ``Encoder.encode`` batch by batch in this process with ``cpus`` torch threads."""
    import numpy as np
    import pyarrow.parquet as pq
    import torch

    from reformer_retrieval.encode import Encoder

    torch.set_num_threads(spec["cpus"])
    texts = pq.read_table(spec["subset"], columns=["text"]).column("text").to_pylist()
    t0 = time.perf_counter()
    encoder = Encoder.load(spec["model"], device="cpu")
    load = time.perf_counter() - t0
    t0 = time.perf_counter()
    vectors = np.concatenate([encoder.encode(b) for b in _batches(texts, spec["batch_size"])])
    seconds = time.perf_counter() - t0
    np.save(spec["vectors"], vectors)
    return {**spec, "status": "ok", "load_s": round(load, 3), "encode_s": round(seconds, 3)}


def run_ray(spec: dict[str, Any]) -> dict[str, Any]:
    """Child: ``encode_dataset`` on a local Ray instance of ``cpus`` CPUs."""
    import logging

    import numpy as np

    t0 = time.perf_counter()
    import ray

    from reformer_retrieval.pipeline.sketch import to_matrix
    from reformer_retrieval.ray_engine import encode_dataset
    from reformer_retrieval.ray_read import read_corpus

    ray.init(num_cpus=spec["cpus"], include_dashboard=False, log_to_driver=False)
    init = time.perf_counter() - t0
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.execution_options.preserve_order = True

    def encode(path: str, batch_size: int) -> tuple[np.ndarray, float]:
        start = time.perf_counter()
        ds = read_corpus(path, rows_per_block=batch_size, num_cpus=0)  # see encode_dataset: blocks, CPUs
        out = encode_dataset(ds, model=spec["model"], concurrency=spec["cpus"], batch_size=batch_size)
        parts = [to_matrix(b.column("embedding"), np.float32)
                 for b in out.iter_batches(batch_format="pyarrow", batch_size=None)]
        return np.concatenate(parts), time.perf_counter() - start

    import pyarrow.parquet as pq

    tiny = str(Path(spec["vectors"]).with_suffix(".startup.parquet"))
    pq.write_table(pq.read_table(spec["subset"]).slice(0, spec["cpus"]), tiny)
    _, startup = encode(tiny, 1)  # actor start + model load + scheduling, next to nothing to encode
    vectors, seconds = encode(spec["subset"], spec["batch_size"])
    np.save(spec["vectors"], vectors)
    ray.shutdown()
    return {**spec, "status": "ok", "init_s": round(init, 3), "startup_s": round(startup, 3),
            "encode_s": round(seconds, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DATA), help="wiki_versions corpus.parquet [%(default)s]")
    ap.add_argument("--docs", type=int, default=400, help="First documents of the corpus to encode [%(default)s]")
    ap.add_argument("--batch-size", type=int, default=8, help="Rows per encoder call [%(default)s]")
    ap.add_argument("--cpus", type=int, default=2, help="Cores for both engines [%(default)s]")
    ap.add_argument("--model", default=None, help="Model directory [the bundled model]")
    ap.add_argument("--timeout", type=float, default=900, help="Seconds per child [%(default)s]")
    ap.add_argument("--json", default=None, help="Write the rows and the summary here")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        import json

        mode = json.loads(args.child)["mode"]
        sys.exit(child_main(run_local if mode == "local" else run_ray, args.child))
    if not Path(args.data).is_file():
        print(f"skipped: {args.data} is absent (the wiki_versions dev set lives in ../shared)")
        return
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        subset = _subset(args.data, args.docs, Path(tmp) / "subset.parquet")
        rows = {}
        for mode in ("local", "ray"):
            spec = {"mode": mode, "subset": str(subset), "docs": args.docs, "batch_size": args.batch_size,
                    "cpus": args.cpus, "model": args.model, "vectors": str(Path(tmp) / f"{mode}.npy")}
            rows[mode] = run_in_subprocess(__file__, spec, args.timeout,
                                           extra_env={"OMP_NUM_THREADS": str(args.cpus)} if mode == "local" else None)
            if rows[mode].get("status") != "ok":
                print(f"{mode}: {rows[mode].get('status')}: {rows[mode].get('note')}")
                return
        a, b = np.load(rows["local"]["vectors"]), np.load(rows["ray"]["vectors"])
    local, ray_s = rows["local"]["encode_s"], rows["ray"]["encode_s"]
    summary = {"docs": args.docs, "batch_size": args.batch_size, "cpus": args.cpus,
               "local_s": local, "ray_s": ray_s, "overhead": round(ray_s / local - 1, 4),
               "ray_startup_s": rows["ray"]["startup_s"], "ray_init_s": rows["ray"]["init_s"],
               "bit_equal": bool(a.shape == b.shape and np.array_equal(a, b)),
               "max_abs_diff": float(np.abs(a - b).max()) if a.shape == b.shape else None,
               "docs_per_s_local": round(args.docs / local, 2), "docs_per_s_ray": round(args.docs / ray_s, 2)}
    print(markdown_table(
        ["engine", "encode s", "docs/s", "startup s", "ray.init s"],
        [["Encoder.encode", fmt_num(local, 2), fmt_num(summary["docs_per_s_local"], 2), "–", "–"],
         ["encode_dataset (Ray)", fmt_num(ray_s, 2), fmt_num(summary["docs_per_s_ray"], 2),
          fmt_num(summary["ray_startup_s"], 2), fmt_num(summary["ray_init_s"], 2)]], "lrrrr"))
    print(f"\n{args.docs} wiki_versions documents, batches of {args.batch_size}, {args.cpus} CPUs: Ray overhead "
          f"{summary['overhead']:+.1%} (target <= +15%); embeddings bit-equal: {summary['bit_equal']} "
          f"(max |diff| {summary['max_abs_diff']:.2g})")
    if args.json:
        write_json(args.json, {"summary": summary, "rows": rows})


if __name__ == "__main__":
    main()
