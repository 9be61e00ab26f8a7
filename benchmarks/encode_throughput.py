"""Throughput and memory of `Encoder.encode_parquet` against the raw model forward on the same batches.

Part 1 (throughput): a generated corpus with a realistic length mix (log-uniform 1K-64K byte tokens) is
encoded end to end by ``encode_parquet`` (reading, tokenising, length-sorted batching, forward, writing parts,
merging), and the same batches (same parts, same ``plan_batches`` plan, inputs prepared on the device in
advance) are run through the bare model forward. The pipeline's overhead is (pipeline - forward) / pipeline;
the target is under 10%.

Part 2 (memory, ``--gb``): generated shards totalling that many GB of text are encoded in a child process and
its peak RSS is compared with the corpus size and with the RSS of merely loading the text column whole
(``pyarrow.parquet.read_table``), the anchor. Documents are truncated at ``--mem-max-tokens`` so that the run
measures the streaming pipeline, not the model (the model's memory is bounded by ``batch_tokens``).

Examples:
    python benchmarks/encode_throughput.py                      # CPU: tiny model, 16 documents, --gb 0.5 2
    python benchmarks/encode_throughput.py --model default --docs 256 --device cuda --gb 0
    python benchmarks/encode_throughput.py --json results.json
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from reformer_retrieval import ReformerConfig, ReformerEncoder
from reformer_retrieval.encode import Encoder, plan_batches

# A small model for quick CPU runs; "default" is the bundled model (d_model 256, 4 layers).
TINY = ReformerConfig(
    d_model=64, n_layers=2, n_heads=2, d_ff=128, embedding_dim=64, chunk_size=64, max_len=65536,
    axial_pos_shape=(256, 256),
)
WORDS = ["the", "of", "and", "to", "in", "a", "is", "that", "for", "it", "as", "was", "with", "be", "by", "on", "not", "he", "this", "are", "or", "his", "from", "at", "which", "but", "have", "an", "they", "you", "were", "her", "she", "there", "been", "one", "all", "we", "their", "has", "would", "when", "if", "so", "no", "will", "can", "more", "other", "its", "into", "do", "time", "only", "new", "some", "could", "these", "two", "may", "first", "then", "any", "like", "now", "my", "such", "over", "our", "man", "me", "even", "most", "made", "after", "also", "document", "version", "section", "page", "data", "system", "index", "search", "near", "duplicate", "text", "long", "model", "encoder", "retrieval", "während", "über", "für", "Straße", "déjà", "été", "très", "naïve", "señor", "año", "ação", "coração", "città", "perché"]


def make_text(rng: np.random.Generator, n_bytes: int) -> str:
    """Synthetic prose of about ``n_bytes`` UTF-8 bytes (Zipf-like word frequencies, sentences, paragraphs)."""
    n_words = max(1, n_bytes // 6)
    ranks = np.minimum(rng.zipf(1.3, n_words), len(WORDS)) - 1
    words = [WORDS[r] for r in ranks]
    for i in range(0, n_words, int(rng.integers(8, 20))):
        words[i] = words[i].capitalize()
    text = " ".join(words)
    data = text.encode("utf-8")[:n_bytes]
    return data.decode("utf-8", errors="ignore")


def load_model(name: str, tmp: Path) -> Path:
    """Directory of the model to benchmark: ``tiny`` (saved to tmp), ``default`` or a path."""
    if name == "default":
        from reformer_retrieval.encode import DEFAULT_MODEL_DIR

        return DEFAULT_MODEL_DIR
    if name == "tiny":
        torch.manual_seed(0)
        return ReformerEncoder(TINY).save_pretrained(tmp / "tiny_model")
    return Path(name)


def write_corpus(path: Path, lengths: np.ndarray, seed: int) -> list[str]:
    rng = np.random.default_rng(seed + 1)
    texts = [make_text(rng, int(n)) for n in lengths]
    pq.write_table(pa.table({"id": [f"doc-{i:06d}" for i in range(len(texts))], "text": texts}), path,
                   row_group_size=64)
    return texts


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def raw_forward_seconds(enc: Encoder, texts: list[str]) -> tuple[float, int, int]:
    """Time the bare model forward on exactly the batches encode_parquet runs (inputs ready on the device)."""
    defaults = inspect.signature(Encoder.encode_parquet).parameters
    part_docs, part_tokens = defaults["part_docs"].default, defaults["part_tokens"].default
    parts: list[list[np.ndarray]] = []
    current: list[np.ndarray] = []
    tokens = 0
    n_docs = 0
    for text in texts:  # the same part boundaries as encode_parquet
        segs, _, _ = enc._tokenize(text)
        current.extend(segs)
        n_docs += 1
        tokens += sum(len(s) for s in segs)
        if n_docs >= part_docs or tokens >= part_tokens:
            parts.append(current)
            current, tokens, n_docs = [], 0, 0
    if current:
        parts.append(current)
    batches = []
    total_tokens = 0
    for segs in parts:
        lengths = [len(s) for s in segs]
        total_tokens += sum(lengths)
        for idx in plan_batches(lengths, enc.batch_tokens, enc.pad_multiple):
            width = max(lengths[i] for i in idx)
            ids = torch.zeros((len(idx), width), dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.bool)
            for row, i in enumerate(idx):
                ids[row, : lengths[i]] = torch.from_numpy(segs[i].astype(np.int64))
                mask[row, : lengths[i]] = True
            batches.append((ids.to(enc.device), mask.to(enc.device)))
    sync(enc.device)
    start = time.perf_counter()
    with torch.inference_mode():
        for ids, mask in batches:
            enc.model(ids, mask)
    sync(enc.device)
    return time.perf_counter() - start, len(batches), total_tokens


def throughput(args: argparse.Namespace, tmp: Path) -> list[dict]:
    rng = np.random.default_rng(args.seed)
    lengths = np.exp(rng.uniform(np.log(args.min_tokens), np.log(args.max_tokens), args.docs)).astype(int)
    src = tmp / "corpus.parquet"
    texts = write_corpus(src, lengths, args.seed)
    model_dir = load_model(args.model, tmp)
    enc = Encoder.load(model_dir, device=args.device, dtype=args.dtype, batch_tokens=args.batch_tokens,
                       max_tokens=65536)
    # warm-up (kernels, allocator) on a few lengths
    enc.encode([make_text(rng, n) for n in (200, 3000, 20000)])
    sync(enc.device)

    rows = []
    for rep in range(args.repeats):
        # pipeline first: any warm-up left over then counts against the pipeline, not the anchor
        dst = tmp / f"emb-{rep}.parquet"
        start = time.perf_counter()
        summary = enc.encode_parquet(src, dst, show_progress=False)
        sync(enc.device)
        pipe_s = time.perf_counter() - start
        raw_s, n_batches, n_tokens = raw_forward_seconds(enc, texts)
        assert summary.documents == len(texts) and summary.tokens == n_tokens
        rows.append({
            "part": "throughput", "repeat": rep, "model": args.model, "device": str(enc.device),
            "dtype": str(enc.dtype).removeprefix("torch."), "docs": len(texts), "tokens": n_tokens,
            "batches": n_batches, "batch_tokens": enc.batch_tokens,
            "raw_forward_s": raw_s, "pipeline_s": pipe_s,
            "raw_docs_per_s": len(texts) / raw_s, "pipeline_docs_per_s": len(texts) / pipe_s,
            "raw_tokens_per_s": n_tokens / raw_s, "pipeline_tokens_per_s": n_tokens / pipe_s,
            "overhead": (pipe_s - raw_s) / pipe_s, "pipeline_over_raw": pipe_s / raw_s,
        })
    if len(rows) > 1:  # the median of each side over the repeats
        med = dict(rows[0], repeat="median")
        raw_s = float(np.median([r["raw_forward_s"] for r in rows]))
        pipe_s = float(np.median([r["pipeline_s"] for r in rows]))
        med.update({
            "raw_forward_s": raw_s, "pipeline_s": pipe_s,
            "raw_docs_per_s": med["docs"] / raw_s, "pipeline_docs_per_s": med["docs"] / pipe_s,
            "raw_tokens_per_s": med["tokens"] / raw_s, "pipeline_tokens_per_s": med["tokens"] / pipe_s,
            "overhead": (pipe_s - raw_s) / pipe_s, "pipeline_over_raw": pipe_s / raw_s,
        })
        rows.append(med)
    return rows


_MEM_CHILD = """
import json, resource, sys, time

def peak_rss_bytes():
    # VmHWM is this process's own high-water mark; ru_maxrss on Linux also counts the forked parent's pages
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

mode, src, dst, model, max_tokens, device = sys.argv[1:7]
start = time.perf_counter()
if mode == "load_whole":
    import pyarrow.parquet as pq
    table = pq.read_table(src, columns=["text"])
    n = table.num_rows
else:
    from reformer_retrieval.encode import Encoder
    enc = Encoder.load(model, device=device, max_tokens=int(max_tokens))
    if mode == "encode":
        n = enc.encode_parquet(src, dst, show_progress=False).documents
    else:
        n = 0
print(json.dumps({"rows": n, "seconds": time.perf_counter() - start,
                  "peak_rss_bytes": peak_rss_bytes()}))
"""


def write_big_corpus(directory: Path, gb: float, seed: int) -> tuple[int, int]:
    """Shards of ~256 MB totalling ``gb`` GB of text; returns (documents, text bytes)."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed + 7)
    base = make_text(rng, 16 << 20)  # one long synthetic text; documents are random slices of it
    target = int(gb * (1 << 30))
    total = docs = shard = 0
    while total < target:
        writer = pq.ParquetWriter(directory / f"shard-{shard:04d}.parquet",
                                  pa.schema([("id", pa.string()), ("text", pa.string())]))
        in_shard = 0
        while in_shard < (256 << 20) and total < target:
            lengths = np.exp(rng.uniform(np.log(4096), np.log(512 << 10), 64)).astype(int)
            starts = rng.integers(0, len(base) - lengths.max() - 1, 64)
            texts = [base[s : s + n] for s, n in zip(starts, lengths)]
            ids = [f"d{docs + i:08d}" for i in range(len(texts))]
            writer.write_table(pa.table({"id": ids, "text": texts}))
            nbytes = int(sum(len(t) for t in texts))
            total += nbytes
            in_shard += nbytes
            docs += len(texts)
        writer.close()
        shard += 1
    return docs, total


def memory(args: argparse.Namespace, tmp: Path) -> list[dict]:
    rows = []
    model_dir = load_model(args.mem_model, tmp)
    script = tmp / "mem_child.py"
    script.write_text(_MEM_CHILD)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def child(mode: str, src: Path) -> dict:
        out = subprocess.run(
            [sys.executable, str(script), mode, str(src), str(tmp / "mem_emb.parquet"), str(model_dir),
             str(args.mem_max_tokens), args.device],
            check=True, capture_output=True, text=True, env=env,
        )
        return json.loads(out.stdout.strip().splitlines()[-1])

    base = child("load_model", tmp)
    for gb in args.gb:
        shards = tmp / f"big-{gb}"
        n_docs, n_bytes = write_big_corpus(shards, gb, args.seed)
        enc = child("encode", shards)
        whole = child("load_whole", shards)
        rows.append({
            "part": "memory", "corpus_gb": n_bytes / (1 << 30), "docs": n_docs, "model": args.mem_model,
            "max_tokens": args.mem_max_tokens, "seconds": enc["seconds"],
            "peak_rss_gb": enc["peak_rss_bytes"] / (1 << 30),
            "model_only_rss_gb": base["peak_rss_bytes"] / (1 << 30),
            "load_whole_rss_gb": whole["peak_rss_bytes"] / (1 << 30),
            "rss_over_corpus": enc["peak_rss_bytes"] / n_bytes,
            "rss_over_load_whole": enc["peak_rss_bytes"] / whole["peak_rss_bytes"],
        })
        for f in shards.glob("*.parquet"):
            f.unlink()
    return rows


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny", help="tiny (default: a 2-layer d_model=64 model), default, or a DIR")
    ap.add_argument("--docs", type=int, default=16, help="documents in the throughput corpus")
    ap.add_argument("--min-tokens", type=int, default=1024)
    ap.add_argument("--max-tokens", type=int, default=65536)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--batch-tokens", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--gb", type=float, nargs="*", default=[0.5, 2.0],
                    help="corpus sizes (GB of text) for the memory part; none to skip it")
    ap.add_argument("--mem-model", default="tiny")
    ap.add_argument("--mem-max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=None, help="where generated files go (default: a temp dir)")
    ap.add_argument("--json", type=Path, default=None, help="write the rows to this JSON file")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp_name:
        tmp = Path(tmp_name)
        rows = throughput(args, tmp)
        print("\n### encode_parquet vs raw model forward (same batches)\n")
        print("| repeat | model | device | dtype | docs | tokens | raw forward s | pipeline s | raw tok/s | pipeline tok/s "
              "| pipeline docs/s | overhead | pipeline / raw |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for r in rows:
            print(f"| {r['repeat']} | {r['model']} | {r['device']} | {r['dtype']} | {r['docs']} | {r['tokens']:,} | "
                  f"{r['raw_forward_s']:.2f} | {r['pipeline_s']:.2f} | {r['raw_tokens_per_s']:,.0f} | "
                  f"{r['pipeline_tokens_per_s']:,.0f} | {r['pipeline_docs_per_s']:.2f} | {100 * r['overhead']:.1f}% | "
                  f"{r['pipeline_over_raw']:.3f} |")
        if args.gb:
            mem_rows = memory(args, tmp)
            print("\n### peak memory, streaming encode vs loading the corpus whole\n")
            print("| corpus GB | docs | model | max_tokens | seconds | peak RSS GB | model-only RSS GB "
                  "| load-whole RSS GB | RSS / corpus | RSS / load-whole |")
            print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
            for r in mem_rows:
                print(f"| {r['corpus_gb']:.2f} | {r['docs']:,} | {r['model']} | {r['max_tokens']} | "
                      f"{r['seconds']:.1f} | {r['peak_rss_gb']:.2f} | {r['model_only_rss_gb']:.2f} | "
                      f"{r['load_whole_rss_gb']:.2f} | {r['rss_over_corpus']:.2f} | {r['rss_over_load_whole']:.2f} |")
            rows += mem_rows
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
