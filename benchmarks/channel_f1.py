"""Best pairwise F1 and ROC-AUC of each channel of a model on labelled files: a quick read of a training run.

For every labelled Parquet file (``id``, ``text``, ``cluster``; a pair in one cluster is a near-duplicate),
the model encodes the texts once; every pair is scored by the cosine of the whole embedding and of each
channel's columns alone, renormalised (the channel rows of ``benchmarks/model_quality.py``), and
`reformer_retrieval.train.pair_metrics` gives ROC-AUC and the best F1 over thresholds. No MinHash or MiniLM
rows (see ``model_quality.py`` for the full table): this is what a GPU distillation run reports on the small
labelled set that travels with it (``scripts/make_distill_subset.py`` writes the clean and OCR-noised files,
so the numbers equal ``model_quality.py``'s channel rows on the same clusters)::

    python benchmarks/channel_f1.py --model runs/distill/model \\
        --data runs/device_distill/labelled_clean.parquet runs/device_distill/labelled_ocr.parquet --json f1.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, write_json
from model_quality import channel_views, load_labelled

__all__ = ["channel_scores", "main"]


def channel_scores(encoder: Any, texts: list[str], clusters: np.ndarray) -> list[dict[str, Any]]:
    """One row per channel (``"both"`` first, then each channel alone) of an `Encoder` on labelled texts:
    ``channel``, ``roc_auc``, ``best_f1``, ``best_threshold``, ``chars_per_s`` (encoding, all channels)."""
    from reformer_retrieval.train import pair_metrics

    started = time.perf_counter()
    emb = encoder.encode(texts, show_progress=False)
    seconds = time.perf_counter() - started
    speed = sum(len(t) for t in texts) / max(seconds, 1e-9)
    parts = [("both", emb), *channel_views(emb, encoder.model.channels())]
    rows = []
    for name, vectors in parts:
        m = pair_metrics(vectors @ vectors.T, clusters)
        rows.append({"channel": name, "roc_auc": m["roc_auc"], "best_f1": m["best_f1"],
                     "best_threshold": m["best_threshold"], "chars_per_s": round(speed, 1),
                     "n_docs": len(texts), "n_pairs": m["n_pairs"], "n_positive_pairs": m["n_positive"]})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="model directory (default: the bundled model)")
    parser.add_argument("--data", type=Path, nargs="+", required=True, help="labelled Parquet files")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda")
    parser.add_argument("--dtype", default="float32", help="encoding dtype (float32 everywhere by default)")
    parser.add_argument("--max-clusters", type=int, default=0, help="seeded subset of whole clusters (0 = all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the cluster subset")
    parser.add_argument("--json", type=Path, default=None, help="write the rows here")
    args = parser.parse_args(argv)

    from reformer_retrieval.encode import Encoder

    for path in args.data:
        if not path.is_file():
            print(f"error: no labelled file {path}", file=sys.stderr)
            return 2
    encoder = Encoder.load(args.model, device=args.device, dtype=args.dtype)
    rows: list[dict[str, Any]] = []
    for path in args.data:
        data = load_labelled(path, args.max_clusters, 0, args.seed)
        texts = [t or "" for t in data["texts"]]
        rows.extend({"data": path.name, "model_id": encoder.model_id, **r}
                    for r in channel_scores(encoder, texts, data["clusters"]))
    print(markdown_table(
        ["data", "channel", "ROC-AUC", "best F1", "at threshold", "chars/s"],
        [[r["data"], r["channel"], f"{r['roc_auc']:.4f}", f"{r['best_f1']:.4f}", f"{r['best_threshold']:.3f}",
          f"{r['chars_per_s']:,.0f}"] for r in rows],
        align="llrrrr",
    ))
    print(f"model {encoder.model_id} on {encoder.device} ({encoder.dtype})")
    if args.json is not None:
        write_json(args.json, {"model": str(args.model), "model_id": encoder.model_id, "device": str(encoder.device),
                               "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
