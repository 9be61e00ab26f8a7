"""``reformer-retrieval index build | add | info``: index directories over embeddings (or texts, for MinHash)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click
from reformer_retrieval.cli.errors import reported_as_click_errors

__all__ = ["index"]

_KINDS = ["flat", "hnsw", "ivfpq", "lsh", "minhash"]


def _errors() -> tuple[type[BaseException], ...]:
    """The exceptions every ``index`` verb reports as a one-line error."""
    from reformer_retrieval.indexes import IndexDirectoryError, IndexInputError

    from reformer_retrieval.corpus import CorpusError

    return (CorpusError, IndexDirectoryError, IndexInputError, ValueError, OSError, RuntimeError)


def _backend_params(kind: str, opts: dict[str, Any]) -> dict[str, Any]:
    """The constructor parameters of ``kind`` among the given options (unset ones left to the backend)."""
    names = {
        "hnsw": {"m": "m", "ef_construction": "ef_construction", "ef_search": "ef_search"},
        "ivfpq": {"nlist": "nlist", "pq_m": "m", "nbits": "nbits", "nprobe": "nprobe", "seed": "seed"},
        "lsh": {"tables": "n_tables", "bits": "bits_per_table", "nflip": "nflip", "seed": "seed",
                "threshold": "threshold"},
        "minhash": {"threshold": "threshold", "num_perm": "num_perm", "shingle": "shingle", "ngram": "ngram",
                    "seed": "seed"},
    }.get(kind, {})
    return {target: opts[src] for src, target in names.items() if opts.get(src) is not None}


def _is_embeddings(path: str) -> bool:
    from reformer_retrieval.corpus import CorpusError, read_embeddings_metadata

    try:
        read_embeddings_metadata(path)
    except CorpusError:
        return False
    return True


def _common_options(func: Any) -> Any:
    options = [
        click.option("--id-column", default="id", show_default=True, help="Id column (MinHash: of the corpus)."),
        click.option("--text-column", default="text", show_default=True, help="Text column (MinHash only)."),
        click.option("--threads", type=click.IntRange(min=1), default=None,
                     help="FAISS (OpenMP) threads [default: all cores]."),
        click.option("-q", "--quiet", is_flag=True, help="No progress bar."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@click.group("index")
def index() -> None:
    """Build, extend and inspect index directories (manifest.json + index file + ids.parquet)."""


_BUILD_EPILOG = """\b
Examples:
  reformer-retrieval index build emb.parquet -o idx/                     # exact (flat)
  reformer-retrieval index build emb.parquet -o idx/ --kind hnsw --m 32 --ef-search 128
  reformer-retrieval index build emb.parquet -o idx/ --kind ivfpq --nprobe 32
  reformer-retrieval index build emb.parquet -o idx/ --kind lsh --threshold 0.8   # tables/bits for recall 0.99
  reformer-retrieval index build corpus.parquet -o idx/ --kind minhash --threshold 0.2

\b
INPUT is an embeddings file (from `reformer-retrieval encode`), or for --kind minhash a corpus
(id and text columns; Parquet, JSON Lines or CSV, a file, directory or quoted glob). The directory
is written atomically; an existing one is only replaced with --overwrite.
"""


@index.command("build", epilog=_BUILD_EPILOG)
@click.argument("input_path", metavar="INPUT")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False, path_type=Path),
              metavar="INDEX_DIR", help="Index directory to write.")
@click.option("--kind", type=click.Choice(_KINDS), default="flat", show_default=True,
              help="flat = exact; hnsw / ivfpq / lsh = approximate; minhash = lexical (from a corpus).")
@click.option("--m", type=click.IntRange(min=2), default=None, help="HNSW graph degree [32].")
@click.option("--ef-construction", type=click.IntRange(min=1), default=None, help="HNSW build beam [80].")
@click.option("--ef-search", type=click.IntRange(min=1), default=None, help="HNSW search beam [128].")
@click.option("--nlist", type=click.IntRange(min=1), default=None, help="IVF lists [about sqrt(n)].")
@click.option("--pq-m", type=click.IntRange(min=1), default=None, help="PQ sub-quantisers, divides dim [dim/4].")
@click.option("--nbits", type=click.IntRange(1, 8), default=None, help="Bits per PQ code [8].")
@click.option("--nprobe", type=click.IntRange(min=1), default=None, help="IVF lists visited per query [16].")
@click.option("--tables", type=click.IntRange(min=1), default=None,
              help="LSH hash tables [from --threshold; else 8].")
@click.option("--bits", type=click.IntRange(1, 64), default=None,
              help="LSH bits per table [from --threshold; else 16].")
@click.option("--nflip", type=click.IntRange(0, 3), default=None,
              help="LSH bit flips probed per table [from --threshold; else 1].")
@click.option("--threshold", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              help="MinHash: Jaccard threshold the banding is tuned for [0.2]. LSH: cosine to find pairs at with "
                   "recall 0.99 (tables / bits derived, or refused if given and short of it).")
@click.option("--num-perm", type=click.IntRange(min=1), default=None, help="MinHash: permutations [128].")
@click.option("--shingle", type=click.Choice(["word", "char"]), default=None, help="MinHash: shingle unit [word].")
@click.option("--ngram", type=click.IntRange(min=1), default=None, help="MinHash: shingle length [2].")
@click.option("--seed", type=int, default=None, help="Seed of IVF-PQ training, LSH rotations, MinHash hashes.")
@click.option("--overwrite", is_flag=True, help="Replace an existing index directory.")
@_common_options
def build(input_path: str, output: Path, kind: str, overwrite: bool, id_column: str, text_column: str,
          threads: int | None, quiet: bool, **opts: Any) -> None:
    """Build an index of KIND over INPUT and write it to INDEX_DIR."""
    from reformer_retrieval.indexes import MinHashIndex, build_index, set_threads

    from reformer_retrieval.corpus import CorpusError, read_embeddings, read_texts

    start = time.perf_counter()
    with reported_as_click_errors(*_errors()):
        set_threads(threads)
        params = _backend_params(kind, opts)
        if kind == "minhash":
            if _is_embeddings(input_path):
                raise click.UsageError("--kind minhash indexes texts: give the corpus, not an embeddings file")
            ids, texts, skipped = read_texts(input_path, id_column, text_column)
            idx: Any = MinHashIndex(**params)
            idx.add(texts, ids, show_progress=not quiet)
            if skipped:
                click.echo(f"skipped {len(skipped):,} rows with a null id or an empty text", err=True)
        else:
            if not Path(input_path).exists():
                raise CorpusError(f"{input_path}: no such file")
            if not _is_embeddings(input_path):
                raise click.UsageError(
                    f"{input_path} is not an embeddings file; run `reformer-retrieval encode` first "
                    "(or use --kind minhash for a lexical index over the corpus)"
                )
            table = read_embeddings(input_path)
            idx = build_index(kind, table.vectors, table.ids, model_id=table.model_id, **params)
        idx.save(output, overwrite=overwrite)
    click.echo(f"built a {kind} index of {idx.count:,} entries (dim {idx.dim}, model {idx.model_id}) in "
               f"{time.perf_counter() - start:.1f} s -> {output}")


@index.command("add", epilog="""\b
Examples:
  reformer-retrieval index add idx/ more_emb.parquet
  reformer-retrieval index add minhash_idx/ more_corpus.parquet

\b
The new vectors must come from the index's model (same model_id and dim), and their ids must be
new. MinHash and LSH indexes get one new shard file (existing files untouched, the manifest swapped
atomically); the other kinds are rewritten atomically.
""")
@click.argument("index_dir", type=click.Path(file_okay=False, path_type=Path))
@click.argument("input_path", metavar="INPUT")
@_common_options
def add(index_dir: Path, input_path: str, id_column: str, text_column: str, threads: int | None,
        quiet: bool) -> None:
    """Add the entries of INPUT (embeddings, or a corpus for MinHash) to INDEX_DIR."""
    from reformer_retrieval.indexes import MinHashIndex, open_index, set_threads
    from reformer_retrieval.indexes.store import check_compatible

    from reformer_retrieval.corpus import read_embeddings, read_texts

    with reported_as_click_errors(*_errors()):
        set_threads(threads)
        idx = open_index(index_dir)
        before = idx.count
        if isinstance(idx, MinHashIndex):
            ids, texts, _ = read_texts(input_path, id_column, text_column)
            idx.add(texts, ids, show_progress=not quiet)
        else:
            table = read_embeddings(input_path)
            check_compatible({"model_id": idx.model_id, "dim": idx.dim}, index_dir, table.model_id, table.dim)
            idx.add(table.vectors, table.ids)
        idx.save(index_dir, overwrite=True)
    click.echo(f"added {idx.count - before:,} entries to {index_dir} (now {idx.count:,})")


@index.command("info", epilog="""\b
Examples:
  reformer-retrieval index info idx/ [--json]
  reformer-retrieval index info idx/ --verify      # read every file, compare its SHA-256

\b
Opening an index (search, add, info) checks that every file the manifest lists is there with its
recorded size; only --verify reads the files to compare their checksums (same-size corruption).
""")
@click.argument("index_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@click.option("--verify", is_flag=True, help="Read every file and check its SHA-256 (sizes are always checked).")
def info(index_dir: Path, as_json: bool, verify: bool) -> None:
    """Describe INDEX_DIR: kind, size, model, parameters, files."""
    from reformer_retrieval.indexes import read_manifest

    with reported_as_click_errors(*_errors()):
        manifest = read_manifest(index_dir, verify=verify)
    if as_json:
        click.echo(json.dumps(manifest, indent=2, sort_keys=True))
        return
    size = sum(f["bytes"] for f in manifest["files"].values())
    click.echo(f"{index_dir}: {manifest['kind']} index, {manifest['count']:,} entries, dim {manifest['dim']}, "
               f"metric {manifest.get('metric')}")
    click.echo(f"model_id: {manifest.get('model_id')}   ids: {manifest.get('id_type')}   "
               f"created: {manifest.get('created')}   library {manifest.get('library_version')}")
    params = ", ".join(f"{k}={v}" for k, v in sorted(manifest.get("parameters", {}).items()))
    click.echo(f"parameters: {params or '-'}")
    click.echo(f"files: {', '.join(sorted(manifest['files']))} ({size / 2**20:,.1f} MiB)"
               + ("; SHA-256 checksums verified" if verify else "; sizes checked (--verify: checksums)"))
