"""Exact lexical pair scores on a labelled set, and on the families set how close each kind of edit stays.

What can a lexical score decide on the fine-grained families set (`benchmarks/make_family_set.py`, docs/
family_set.md)? For each method, every pair of documents gets a similarity and `pair_metrics` gives the best
pairwise F1 and ROC-AUC, on the file as it is and on an OCR-noised copy (`model_quality.noisy_copy`, as
``model_quality.py`` makes it). Methods (``--methods``):

* ``lexical``: cosine of the default model's lexical channel (hashed byte 6-grams, log tf, learned weights,
  1,024-wide count sketch), what the embedding holds;
* ``word3``: exact Jaccard of the word 3-gram sets (``\\w+`` tokens of the lower-cased text), the quantity
  MinHash estimates;
* ``byte10``: exact set cosine ``|A & B| / sqrt(|A| |B|)`` of the byte 10-gram sets of the tokenizer's
  normalised text (NFKC, lower case, whitespace runs to one space);
* ``byte10-digits``: the same with every digit mapped to ``0`` first, so that a changed date, house number or
  ZIP code leaves the n-grams alone (and so does a changed quantity: see the table).

With a ``kind`` column (the families set) a second table gives, per kind of document, the median similarity to
its reference: a positive's and a clause variant's base, a variant's copy's variant (ids as make_family_set.py
writes them: ``<section>-base``, ``<section>-clause``), and for bases the highest similarity to a sibling
section. A kind of must-match edit whose median falls below a kind of must-not-match edit cannot be separated
from it by any threshold of that score::

    python benchmarks/make_family_set.py --out family.parquet
    python benchmarks/family_scores.py family.parquet [--json scores.json]
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, write_json
from model_quality import load_labelled, noisy_copy
from reformer_retrieval.indexes.minhash import Shingler, ngram_hashes

from reformer_retrieval.tokenizer import ByteTokenizer

__all__ = ["METHODS", "kind_medians", "main", "ngram_sets", "reference_rows", "set_similarity"]

METHODS = ("lexical", "word3", "byte10", "byte10-digits")
_DIGIT = re.compile(r"\d")
_NORMALISER = ByteTokenizer(normalization="NFKC", lowercase=True, collapse_whitespace=True)


def normalise(text: str, fold_digits: bool = False) -> str:
    """The default tokenizer's normalisation (NFKC, lower case, whitespace runs to one space), optionally with
    every digit mapped to ``0``."""
    text = _NORMALISER.normalize(text)
    return _DIGIT.sub("0", text) if fold_digits else text


def ngram_sets(texts: list[str], unit: str, n: int, fold_digits: bool = False) -> sp.csr_matrix:
    """(documents x distinct n-grams) binary matrix of the n-gram sets of the normalised texts: ``unit``
    ``"byte"`` (UTF-8 bytes) or ``"word"`` (``\\w+`` tokens, MinHash's `Shingler`); one n-gram of everything
    when a text is shorter than ``n``, none when it is empty."""
    if unit not in ("byte", "word"):
        raise ValueError(f"unit must be 'byte' or 'word', got {unit!r}")
    words = Shingler("word", n)
    per_doc = []
    for text in texts:
        norm = normalise(text, fold_digits)
        if unit == "byte":
            codes = np.frombuffer(norm.encode("utf-8"), np.uint8).astype(np.uint64)
            per_doc.append(np.unique(ngram_hashes(codes, n)))
        else:
            per_doc.append(words.shingles(norm))
    vocab, columns = np.unique(np.concatenate(per_doc) if per_doc else np.zeros(0, np.uint64), return_inverse=True)
    rows = np.repeat(np.arange(len(texts)), [len(h) for h in per_doc])
    return sp.csr_matrix((np.ones(len(columns)), (rows, columns)), shape=(len(texts), len(vocab)))


def set_similarity(sets: sp.csr_matrix, kind: str) -> np.ndarray:
    """All-pairs ``"jaccard"`` or ``"cosine"`` (``|A & B| / sqrt(|A| |B|)``) of binary set rows; an empty set
    scores 0 against everything."""
    inter = np.asarray((sets @ sets.T).todense(), dtype=np.float64)
    size = np.asarray(sets.sum(axis=1), dtype=np.float64).ravel()
    if kind == "jaccard":
        return inter / np.maximum(size[:, None] + size[None, :] - inter, 1.0)
    if kind == "cosine":
        return inter / np.maximum(np.sqrt(size[:, None] * size[None, :]), 1.0)
    raise ValueError(f"kind must be 'jaccard' or 'cosine', got {kind!r}")


def similarity(method: str, texts: list[str], model: str | None) -> np.ndarray:
    """The (n, n) similarity matrix of one of `METHODS`."""
    if method == "lexical":
        from reformer_retrieval.encode import Encoder

        vectors = Encoder.load(model, device="cpu", channels="lexical").encode(texts, show_progress=False)
        return (vectors @ vectors.T).astype(np.float64)
    if method == "word3":
        return set_similarity(ngram_sets(texts, "word", 3), "jaccard")
    if method in ("byte10", "byte10-digits"):
        return set_similarity(ngram_sets(texts, "byte", 10, fold_digits=method.endswith("digits")), "cosine")
    raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")


def reference_rows(ids: list[str], kinds: list[str], families: list[str]) -> dict[int, list[int]]:
    """Per document, the rows its similarity is read against: a positive's or a clause variant's base, a
    variant copy's variant, a base's sibling bases (same family). Documents whose reference is missing (a
    subset) are left out."""
    index = {doc: i for i, doc in enumerate(ids)}
    bases_of: dict[str, list[int]] = {}
    for i, (kind, family) in enumerate(zip(kinds, families)):
        if kind == "base":
            bases_of.setdefault(family, []).append(i)
    refs: dict[int, list[int]] = {}
    for i, (doc, kind) in enumerate(zip(ids, kinds)):
        if kind == "base":
            refs[i] = [j for j in bases_of[families[i]] if j != i]
            continue
        section = doc.split("-clause")[0] if kind.startswith(("clause:", "variant-positive:")) else doc.rsplit("-", 1)[0]
        target = f"{section}-clause" if kind.startswith("variant-positive:") else f"{section}-base"
        if target in index:
            refs[i] = [index[target]]
    return refs


def kind_medians(sim: np.ndarray, kinds: list[str], refs: dict[int, list[int]]) -> dict[str, float]:
    """Median similarity to the reference per kind (``base``: the highest to a sibling section)."""
    values: dict[str, list[float]] = {}
    for i, rows in refs.items():
        if rows:
            values.setdefault(kinds[i], []).append(float(sim[i, rows].max()))
    return {kind: float(np.median(v)) for kind, v in sorted(values.items())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("labelled", type=Path, help="labelled Parquet (id, text, cluster[, family, kind])")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {', '.join(METHODS)}")
    p.add_argument("--model", default=None, help="model directory of the lexical row (default: bundled)")
    p.add_argument("--max-clusters", type=int, default=0, help="seeded subset of whole clusters (0 = all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the cluster subset")
    p.add_argument("--noise-strength", type=float, default=0.5, help="strength of the OCR-noised copy")
    p.add_argument("--noise-seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    for m in methods:
        if m not in METHODS:
            p.error(f"unknown method {m!r}; choose from {', '.join(METHODS)}")

    import pyarrow.parquet as pq

    from reformer_retrieval.train import pair_metrics

    data = load_labelled(args.labelled, args.max_clusters, 0, args.seed)
    texts, clusters = data["texts"], data["clusters"]
    copies = {"clean": texts, "ocr": noisy_copy(texts, data["rows"], args.noise_strength, args.noise_seed, "ocr")}
    names = pq.read_schema(args.labelled).names
    refs, kinds = None, None
    if "kind" in names and "family" in names:
        table = pq.read_table(args.labelled, columns=["kind", "family"])
        kinds = [table.column("kind")[r].as_py() for r in data["rows"]]
        families = [table.column("family")[r].as_py() for r in data["rows"]]
        refs = reference_rows(data["ids"], kinds, families)

    rows: list[dict[str, Any]] = []
    medians: dict[str, dict[str, dict[str, float]]] = {}
    for method in methods:
        for copy, docs in copies.items():
            started = time.perf_counter()
            sim = similarity(method, docs, args.model)
            seconds = time.perf_counter() - started
            m = pair_metrics(sim, clusters)
            rows.append({"method": method, "copy": copy, "best_f1": m["best_f1"], "roc_auc": m["roc_auc"],
                         "best_threshold": m["best_threshold"], "seconds": seconds, "n_docs": len(docs)})
            if refs is not None and kinds is not None:
                medians.setdefault(method, {})[copy] = kind_medians(sim, kinds, refs)

    print(f"{args.labelled}: {len(texts)} documents, {len(set(clusters.tolist()))} clusters; OCR copy: strength "
          f"{args.noise_strength}, seed {args.noise_seed}\n")
    by = {(r["method"], r["copy"]): r for r in rows}
    print(markdown_table(
        ["method", "best F1 clean", "best F1 OCR", "ROC-AUC clean", "ROC-AUC OCR"],
        [[m, f"{by[m, 'clean']['best_f1']:.3f}", f"{by[m, 'ocr']['best_f1']:.3f}",
          f"{by[m, 'clean']['roc_auc']:.3f}", f"{by[m, 'ocr']['roc_auc']:.3f}"] for m in methods],
    ))
    if medians:
        kind_names = sorted({k for per in medians.values() for k in per["clean"]})
        print("\nMedian similarity to the reference, clean (base: highest to a sibling section):\n")
        print(markdown_table(["kind", *methods],
                             [[k, *(f"{medians[m]['clean'].get(k, float('nan')):.3f}" for m in methods)]
                              for k in kind_names]))
    if args.json:
        write_json(args.json, {"meta": {k: str(v) for k, v in vars(args).items()}, "rows": rows, "medians": medians})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
