"""Bytes vs BPE: how much shorter a corpus-trained BPE vocabulary makes sequences, on clean and noisy text.

A byte-level BPE vocabulary (Hugging Face ``tokenizers``, ``--vocab`` entries) is trained on a seeded sample of
the training corpus, after the same normalisation as the default model's byte tokenizer (NFKC, lower case,
collapsed whitespace). Both tokenizers then encode a labelled file twice, clean and as an OCR-noised copy
(``augment(text, strength, seed=(noise_seed, i), preset="ocr")``, i the position among the non-empty texts), and the table
gives tokens per document, bytes per token, and how many of a document's distinct token n-grams survive the
noise (the share of the clean copy's n-gram set found in the noisy copy's), with n = 4 for BPE and, for
bytes, the n that spans as many bytes as 4 BPE tokens do on average: a rough view of how much of what the
encoder sees is left intact by OCR errors. The encoder's cost is about linear in tokens
(``encoder_speed.py``), so the token ratio is the speed ratio.

Needs ``pip install tokenizers`` (it comes with the ``bench`` extra's ``transformers``).

    python benchmarks/tokenizer_compare.py ../shared/data/corpus ../shared/data/dev/wiki_versions/corpus.parquet
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
from model_quality import noisy_copy


def _sample_texts(corpus: str, n_bytes: int, seed: int) -> list[str]:
    """Seeded random windows of the corpus's documents, about ``n_bytes`` in all."""
    from reformer_retrieval.train.data import read_corpus

    data = read_corpus(corpus)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(data))
    per_doc = max(4096, n_bytes // max(1, len(data)))
    out: list[str] = []
    total = 0
    for i in order.tolist():
        text = data.texts[i]
        start = int(rng.integers(0, max(1, len(text) - per_doc)))
        piece = text[start : start + per_doc]
        out.append(piece)
        total += len(piece.encode("utf-8"))
        if total >= n_bytes:
            break
    return out


def _gram_survival(clean: list[int], noisy: list[int], n: int = 4) -> float:
    grams = {tuple(clean[i : i + n]) for i in range(len(clean) - n + 1)}
    if not grams:
        return 1.0
    other = {tuple(noisy[i : i + n]) for i in range(len(noisy) - n + 1)}
    return len(grams & other) / len(grams)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("corpus", help="training corpus (Parquet file or directory) to learn the BPE vocabulary on")
    p.add_argument("labelled", help="Parquet with a text column to measure on")
    p.add_argument("--text-column", default="text")
    p.add_argument("--vocab", type=int, default=16384, help="BPE vocabulary size")
    p.add_argument("--train-bytes", type=int, default=32_000_000, help="bytes of corpus sample to train BPE on")
    p.add_argument("--noise-strength", type=float, default=0.5)
    p.add_argument("--noise-seed", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    import pyarrow.parquet as pq

    from reformer_retrieval import ByteTokenizer
    from reformer_retrieval.tokenizer_bpe import train_bpe

    settings = {"normalization": "NFKC", "lowercase": True, "collapse_whitespace": True}
    byte_tok = ByteTokenizer(**settings)
    t0 = time.perf_counter()
    bpe = train_bpe(_sample_texts(args.corpus, args.train_bytes, args.seed), args.vocab, **settings).backend
    train_s = time.perf_counter() - t0

    texts = pq.read_table(args.labelled, columns=[args.text_column]).column(args.text_column).to_pylist()
    texts = [t for t in texts if t]
    clean = [byte_tok.normalize(t) for t in texts]
    # seeded by each text's position among the non-empty texts (not its row in the file)
    noisy = [byte_tok.normalize(t)
             for t in noisy_copy(texts, range(len(texts)), args.noise_strength, args.noise_seed, "ocr")]

    def encode_bytes(batch: list[str]) -> list[list[int]]:
        return [list(t.encode("utf-8")) for t in batch]

    def encode_bpe(batch: list[str]) -> list[list[int]]:
        return [e.ids for e in bpe.encode_batch(batch, add_special_tokens=False)]

    rows: list[dict[str, Any]] = []
    encoded = {name: (fn(clean), fn(noisy)) for name, fn in (("bytes", encode_bytes), ("bpe", encode_bpe))}
    # the byte encodings' lengths are the byte counts
    n_bytes_c, n_bytes_n = (sum(len(x) for x in side) for side in encoded["bytes"])
    span = max(1, round(4 * n_bytes_c / sum(len(x) for x in encoded["bpe"][0])))
    for name, key, gram in (("bytes", "bytes", span), (f"BPE {args.vocab}", "bpe", 4)):
        c, n = encoded[key]
        rows.append(
            {
                "tokenizer": name,
                "tokens_per_doc_clean": float(np.mean([len(x) for x in c])),
                "tokens_per_doc_noisy": float(np.mean([len(x) for x in n])),
                "bytes_per_token_clean": n_bytes_c / sum(len(x) for x in c),
                "bytes_per_token_noisy": n_bytes_n / sum(len(x) for x in n),
                "gram_n": gram,
                "gram_survival": float(np.mean([_gram_survival(a, b, gram) for a, b in zip(c, n)])),
            }
        )
    base = rows[0]["tokens_per_doc_clean"]
    table = [
        [
            r["tokenizer"],
            f"{r['tokens_per_doc_clean']:,.0f}",
            f"{r['tokens_per_doc_noisy']:,.0f}",
            f"{r['bytes_per_token_clean']:.2f}",
            f"{r['bytes_per_token_noisy']:.2f}",
            f"{base / r['tokens_per_doc_clean']:.2f}x",
            f"{r['gram_survival']:.3f} (n={r['gram_n']})",
        ]
        for r in rows
    ]
    print(
        f"{len(texts)} documents of {args.labelled}; BPE trained on {args.train_bytes:,} bytes of {args.corpus} "
        f"in {train_s:.0f} s; noisy copy: ocr preset, strength {args.noise_strength}, seed {args.noise_seed}\n"
    )
    print(
        markdown_table(
            ["tokenizer", "tokens/doc clean", "tokens/doc noisy", "bytes/token clean", "bytes/token noisy",
             "shorter than bytes", f"~{span}-byte n-grams surviving noise"],
            table,
        )
    )
    if args.json:
        write_json(args.json, {"meta": vars(args), "rows": rows, "bpe_train_s": train_s})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
