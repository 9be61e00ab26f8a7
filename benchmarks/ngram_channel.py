"""The hashed n-gram channel's design, measured: n-gram size, term frequency, bucket count, projection width.

Every row builds the n-gram channel alone (`HashedNgrams`, no Reformer, no training) with its log-weights at
``idf ** power`` over a seeded sample of training documents (as the trainer starts them), and scores all pairs
of a labelled set by the channel's cosine: pair ROC-AUC and the best F1 over thresholds, on the clean texts
and on an OCR-noised copy (`augment`, preset ``ocr``, as `model_quality.py` makes it). A row with ``dim`` 0
is the exact cosine of the weighted bucket vectors (no projection: the ceiling of that weighting), computed
sparsely; other rows project them as the model does, with a learned-table start (unit Gaussian vectors,
``table``) or a count sketch (``sketch``). MinHash (word 3-grams, 128 permutations, datasketch's estimate) is
the first row for scale.

A row is written ``n/tf/buckets/dim/power/projection``, e.g. ``6/log/1048576/1024/1/sketch``; the default grid
is the study quoted in the README. Examples::

    python benchmarks/ngram_channel.py --json ngram_channel.json                  # the README's study
    python benchmarks/ngram_channel.py --rows 5/binary/16777216/0/1/sketch,6/log/1048576/1024/1/sketch
    python benchmarks/ngram_channel.py --max-clusters 40 --idf-docs 200           # a quick look
"""

from __future__ import annotations

import argparse
import glob
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, write_json
from model_quality import DEFAULT_DATA, load_labelled, minhash_similarity, noisy_copy

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = REPO / ".." / "shared" / "data" / "corpus"

STUDY = (
    # what the shipped stage-3 channel did, without its training: raw counts, 16K buckets, a 256-wide table
    "5/raw/16384/256/2/table",
    # the weighting, exactly (2^24 buckets, no projection): raw counts vs log vs binary, idf powers
    "5/raw/16777216/0/2/sketch", "5/raw/16777216/0/1/sketch", "5/log/16777216/0/1/sketch",
    "5/binary/16777216/0/1/sketch", "6/log/16777216/0/1/sketch", "8/log/16777216/0/1/sketch",
    # buckets: collisions spoil the idf
    "6/log/16384/0/1/sketch", "6/log/65536/0/1/sketch", "6/log/1048576/0/1/sketch",
    # projection width of the count sketch (2^20 buckets)
    "6/log/1048576/256/1/sketch", "6/log/1048576/512/1/sketch", "6/log/1048576/1024/1/sketch",
    "6/log/1048576/2048/1/sketch",
    # a learned-table start at the shipped width and buckets, with the better weighting
    "6/log/16384/1024/1/table",
)

__all__ = ["ChannelSpec", "channel_similarity", "main"]


@dataclass(frozen=True)
class ChannelSpec:
    """One row of the grid: the n-gram channel's settings."""

    n: int
    tf: str
    buckets: int
    dim: int
    power: float
    projection: str

    @classmethod
    def parse(cls, text: str) -> ChannelSpec:
        """Read ``n/tf/buckets/dim/power/projection``; ValueError names a malformed row."""
        parts = text.strip().split("/")
        if len(parts) != 6:
            raise ValueError(f"row {text!r}: expected n/tf/buckets/dim/power/projection")
        try:
            return cls(int(parts[0]), parts[1], int(parts[2]), int(parts[3]), float(parts[4]), parts[5])
        except ValueError as exc:
            raise ValueError(f"row {text!r}: {exc}") from exc

    def __str__(self) -> str:
        width = "exact" if self.dim == 0 else f"{self.dim} ({self.projection})"
        return f"{self.n}-grams, tf {self.tf}, idf^{self.power:g}, {self.buckets:,} buckets, {width}"


def _module(spec: ChannelSpec, seed: int) -> Any:
    import torch

    from reformer_retrieval.model.ngram_hash import HashedNgrams

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the table start of table rows
        return HashedNgrams(spec.n, spec.buckets, max(spec.dim, 1), seed, tf=spec.tf, projection=spec.projection)


def channel_similarity(spec: ChannelSpec, ids: list[np.ndarray], idf_ids: list[np.ndarray], seed: int = 0) -> np.ndarray:
    """All-pairs cosine (n, n) of the channel ``spec`` over token-id arrays ``ids``, its log-weights at
    ``idf ** power`` over ``idf_ids``."""
    import scipy.sparse as sp
    import torch

    from reformer_retrieval.model.ngram_hash import idf_log_weights

    module = _module(spec, seed)
    module.set_log_weights(idf_log_weights(module, idf_ids, spec.power))
    vectors = np.zeros((len(ids), spec.dim), dtype=np.float32)
    cols, vals = [], []
    with torch.no_grad():
        for i, seq in enumerate(ids):
            x = torch.as_tensor(seq, dtype=torch.int64).reshape(1, -1)
            mask = torch.ones_like(x, dtype=torch.bool)
            if spec.dim:
                vectors[i] = module(x, mask)[0].numpy()
            else:  # exact: the weighted bucket vector itself, as a sparse row
                _, distinct, weights = module.weighted_buckets(module.bucket_ids(x), mask)
                cols.append(distinct.numpy())
                vals.append(weights.numpy().astype(np.float64))
    if spec.dim:
        return vectors @ vectors.T
    rows = [np.full(len(c), i) for i, c in enumerate(cols)]
    m = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(len(ids), spec.buckets))
    norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=1)).ravel())
    m = sp.diags(1.0 / np.maximum(norms, 1e-12)) @ m
    return (m @ m.T).toarray().astype(np.float32)


def _idf_sample(corpus: Path, docs: int, tokens: int, tokenizer: Any, seed: int) -> list[np.ndarray]:
    """Token ids of a seeded sample of training documents (the trainer's idf start reads the same way)."""
    import pyarrow.parquet as pq

    files = sorted(glob.glob(str(corpus / "train-*.parquet"))) if corpus.is_dir() else [str(corpus)]
    if not files:
        raise FileNotFoundError(f"no train-*.parquet under {corpus}")
    texts: list[str] = []
    for f in files:
        texts.extend(t for t in pq.read_table(f, columns=["text"]).column("text").to_pylist() if t)
    order = np.random.default_rng([seed, 0x1DF]).permutation(len(texts))[:docs]
    return [tokenizer.encode(texts[i], tokens)[0] for i in order.tolist()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="labelled Parquet (id, text, cluster)")
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="training corpus (the idf sample)")
    parser.add_argument("--rows", default=",".join(STUDY), help="comma-separated n/tf/buckets/dim/power/projection")
    parser.add_argument("--idf-docs", type=int, default=2000, help="training documents of the idf sample")
    parser.add_argument("--idf-tokens", type=int, default=16384, help="tokens read per idf document")
    parser.add_argument("--max-clusters", type=int, default=0, help="seeded subset of whole clusters (0 = all)")
    parser.add_argument("--noise-strength", type=float, default=0.5, help="strength of the OCR-noised copy")
    parser.add_argument("--noise-seed", type=int, default=0, help="seed of the OCR-noised copy")
    parser.add_argument("--seed", type=int, default=0, help="hash seed of the channel (the model's hash_seed)")
    parser.add_argument("--json", type=Path, default=None, help="write the rows here")
    args = parser.parse_args(argv)

    try:
        specs = [ChannelSpec.parse(r) for r in args.rows.split(",") if r.strip()]
        for s in specs:  # the module checks tf and projection; check them before the long part starts
            _module(ChannelSpec(s.n, s.tf, 16, 1, s.power, s.projection), 0)
    except ValueError as exc:
        print(f"--rows: {exc}", file=sys.stderr)
        return 2
    for path, what in ((args.data, "labelled data"), (args.corpus, "training corpus")):
        if not path.exists():
            print(f"no {what} at {path}", file=sys.stderr)
            return 2
    from reformer_retrieval.tokenizer import ByteTokenizer
    from reformer_retrieval.train import pair_metrics

    tokenizer = ByteTokenizer(normalization="NFKC", lowercase=True, collapse_whitespace=True)  # the default model's
    data = load_labelled(args.data, args.max_clusters, 0, 0)
    clean = data["texts"]
    noisy = noisy_copy(clean, data["rows"], args.noise_strength, args.noise_seed, "ocr")
    idf_ids = _idf_sample(args.corpus, args.idf_docs, args.idf_tokens, tokenizer, 0)
    sets = {"clean": clean, "noisy": noisy}
    ids = {k: [tokenizer.encode(t)[0] for t in v] for k, v in sets.items()}
    minhash = {k: pair_metrics(minhash_similarity(v)[0], data["clusters"]) for k, v in sets.items()}
    rows: list[dict[str, Any]] = [{
        "row": "MinHash", "setting": "MinHash (word 3-grams, 128 perm)", "seconds": 0.0,
        **{f"{k}_{m}": minhash[k][m] for k in sets for m in ("roc_auc", "best_f1")},
    }]
    for spec in specs:
        t = time.perf_counter()
        row: dict[str, Any] = {"row": f"{spec.n}/{spec.tf}/{spec.buckets}/{spec.dim}/{spec.power:g}/{spec.projection}",
                               "setting": str(spec)}
        for k in sets:
            m = pair_metrics(channel_similarity(spec, ids[k], idf_ids, args.seed), data["clusters"])
            row[f"{k}_roc_auc"], row[f"{k}_best_f1"] = m["roc_auc"], m["best_f1"]
        row["seconds"] = round(time.perf_counter() - t, 1)
        rows.append(row)
        print(f"{row['setting']}: clean {row['clean_roc_auc']:.4f} / {row['clean_best_f1']:.4f}, "
              f"noisy {row['noisy_roc_auc']:.4f} / {row['noisy_best_f1']:.4f} ({row['seconds']} s)", flush=True)
    base = rows[0]
    print(markdown_table(
        ["setting", "ROC-AUC clean", "best F1 clean", "ROC-AUC OCR", "best F1 OCR", "F1 / MinHash clean",
         "F1 / MinHash OCR"],
        [[r["setting"], f"{r['clean_roc_auc']:.4f}", f"{r['clean_best_f1']:.4f}", f"{r['noisy_roc_auc']:.4f}",
          f"{r['noisy_best_f1']:.4f}", f"{r['clean_best_f1'] / base['clean_best_f1']:.3f}x",
          f"{r['noisy_best_f1'] / base['noisy_best_f1']:.3f}x"] for r in rows],
        align="lrrrrrr",
    ))
    n_pairs = len(clean) * (len(clean) - 1) // 2
    print(f"{len(clean)} documents, {n_pairs:,} pairs per condition; idf over {len(idf_ids)} training documents")
    if args.json is not None:
        meta = {"data": str(args.data), "n_docs": len(clean), "idf_docs": len(idf_ids), "idf_tokens": args.idf_tokens,
                "noise_strength": args.noise_strength, "noise_seed": args.noise_seed, "seed": args.seed}
        write_json(args.json, {"meta": meta, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
