"""``reformer-retrieval dedup``: near-duplicate clusters of a corpus (end to end) or of an embeddings file."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from reformer_retrieval.cli.options import device_option

__all__ = ["dedup"]

_EPILOG = """\b
Examples:
  reformer-retrieval dedup examples/sample.parquet -o dedup_out/
  reformer-retrieval dedup corpus.parquet -o out/ --method hybrid --model my_model/
  reformer-retrieval dedup corpus.parquet -o out/ --method minhash --threshold 0.5
  reformer-retrieval dedup emb.parquet -o out/ --index hnsw --k 32          # from embeddings
  reformer-retrieval dedup emb.parquet -o out/ --method hybrid --corpus corpus.parquet
  reformer-retrieval dedup corpus.parquet -o out2/ --exclude-pairs marks.jsonl   # after `report` review
  reformer-retrieval dedup shards/ -o out/ --method minhash --engine local      # staged, resumable
  reformer-retrieval dedup emb.parquet --corpus shards/ -o out/ --engine local  # staged, from embeddings
  reformer-retrieval dedup s3://bucket/corpus/ -o out/ --engine ray --ray-address auto

\b
INPUT is a corpus (id + text columns; encoded with --model, the embeddings kept in
OUT_DIR/embeddings.parquet) or an embeddings file. Every candidate pair is verified exactly (cosine
on the vectors, Jaccard on word 2-gram shingles) before clustering. Writes OUT_DIR/clusters.parquet
(every id, singletons included), OUT_DIR/pairs.parquet and OUT_DIR/summary.json; from a corpus also
OUT_DIR/embeddings.parquet, embeddings.skipped.parquet and (when rows are skipped) skipped.parquet. Every
file written is listed at the end. INPUT and --corpus may be Parquet, JSON Lines or CSV.
Default thresholds: cosine from the model's training.json "dedup_threshold" ("hybrid_dedup_threshold"
for --method hybrid; else the library default); for an embeddings INPUT, the model that made them (the
bundled one, or --model DIR; another model's default is refused: give --threshold), Jaccard 0.2 on word 2-grams (chosen on the wiki_versions dev set; see the README).
"""


def _default_bucket_cap() -> int:
    """The pipeline's bucket cap, read when the command runs (importing the pipeline slows every command)."""
    from reformer_retrieval.pipeline import candidates

    return candidates.DEFAULT_BUCKET_CAP


@click.command("dedup", epilog=_EPILOG)
@click.argument("input_path", metavar="INPUT")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False, path_type=Path),
              metavar="OUT_DIR", help="Output directory.")
@click.option("--method", type=click.Choice(["embedding", "minhash", "hybrid"]), default="embedding",
              show_default=True, help="Candidates from embeddings, MinHash LSH, or both (union).")
@click.option("--threshold", type=float, default=None,
              help="Cosine threshold (embedding, hybrid) or Jaccard threshold (minhash) [model / library default].")
@click.option("--minhash-threshold", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              help="Jaccard threshold of the lexical half of --method hybrid [0.2].")
@click.option("--index", "index_kind", type=click.Choice(["flat", "hnsw", "ivfpq", "lsh"]), default="flat",
              show_default=True, help="Embedding candidates: exact range search (flat), LSH, or k-NN (hnsw, ivfpq).")
@click.option("--k", type=click.IntRange(min=1), default=32, show_default=True,
              help="Neighbours per document with --index hnsw / ivfpq.")
@click.option("--keep", type=click.Choice(["longest", "first", "central"]), default="longest", show_default=True,
              help="Representative of each cluster.")
@click.option("--corpus", default=None, metavar="CORPUS",
              help="Corpus of the texts when INPUT is an embeddings file (minhash / hybrid / --keep longest).")
@click.option("--model", type=click.Path(file_okay=False, path_type=Path), default=None, metavar="DIR",
              help="Model directory (default: the bundled default model).")
@device_option(help="Where to encode.")
@click.option("--id-column", default="id", show_default=True, help="Id column of the corpus.")
@click.option("--text-column", default="text", show_default=True, help="Text column of the corpus.")
@click.option("--num-perm", type=click.IntRange(min=1), default=128, show_default=True, help="MinHash permutations.")
@click.option("--shingle", type=click.Choice(["word", "char"]), default="word", show_default=True,
              help="MinHash shingle unit.")
@click.option("--ngram", type=click.IntRange(min=1), default=2, show_default=True, help="MinHash shingle length.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="FAISS threads [default: all cores].")
@click.option("--exclude-pairs", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              metavar="MARKS", help="Marks file from `report` (JSON Lines or CSV): pairs marked not_duplicate "
              "stay in separate clusters.")
@click.option("--resume", is_flag=True, help="Reuse OUT_DIR/embeddings.parquet (or its parts) from an earlier run.")
@click.option("--engine", type=click.Choice(["memory", "local", "ray"]), default="memory", show_default=True,
              help="memory: everything in this process, all pairs of each bucket; local: the staged pipeline "
              "(Parquet stages under OUT_DIR/stages, star edges, resumes by rerunning); ray: the same stages on Ray.")
@click.option("--ray-address", default=None, metavar="ADDR",
              help="Ray cluster to join with --engine ray (e.g. auto); default: a local Ray on this machine's cores.")
@click.option("--gpus-per-actor", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="GPUs per encoder actor with --engine ray.")
@click.option("--bucket-cap", type=click.IntRange(min=2), default=_default_bucket_cap, show_default=False,
              help="Staged engines: LSH buckets larger than this are reported in summary.json (never dropped) "
              "[default: reformer_retrieval.pipeline.DEFAULT_BUCKET_CAP].")
@click.option("--components", "components_mode", type=click.Choice(["single", "rounds"]), default="single",
              show_default=True, help="Staged engines: connected components in one task (SciPy, all edges in one "
              "process) or in large-star / small-star rounds over edge partitions (same clusters).")
@click.option("--show", type=click.IntRange(min=0), default=10, show_default=True,
              help="Clusters to print (0: none).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def dedup(input_path: str, output: Path, method: str, threshold: float | None, minhash_threshold: float | None,
          index_kind: str, k: int, keep: str, corpus: str | None, model: Path | None, device: str, id_column: str,
          text_column: str, num_perm: int, shingle: str, ngram: int, threads: int | None, exclude_pairs: Path | None,
          resume: bool, engine: str, ray_address: str | None, gpus_per_actor: float, bucket_cap: int,
          components_mode: str, show: int, quiet: bool) -> None:
    """Find near-duplicate clusters in INPUT and write them to OUT_DIR."""
    from reformer_retrieval.cli.errors import reported_as_click_errors
    from reformer_retrieval.indexes import IndexInputError, set_threads

    from reformer_retrieval.checkpoint import ModelDirectoryError
    from reformer_retrieval.corpus import CorpusError, read_embeddings_metadata
    from reformer_retrieval.dedup import dedup_corpus, dedup_embeddings

    options: dict[str, Any] = {
        "threshold": threshold, "minhash_threshold": minhash_threshold, "index": index_kind, "k": k,
        "keep": keep, "num_perm": num_perm, "shingle": shingle, "ngram": ngram,
    }
    errors = (CorpusError, ModelDirectoryError, IndexInputError, ValueError, OSError, RuntimeError)
    before = _file_states(output)
    try:
        with reported_as_click_errors(*errors):
            set_threads(threads)
            if exclude_pairs is not None:
                from reformer_retrieval.marks import not_duplicate_pairs, read_marks

                options["exclude_pairs"] = not_duplicate_pairs(read_marks(exclude_pairs))
            try:
                read_embeddings_metadata(input_path)
                is_embeddings = True
            except CorpusError:
                is_embeddings = False
            if engine != "memory":
                if exclude_pairs is not None:
                    raise click.UsageError(f"--exclude-pairs is for --engine memory, not --engine {engine}")
                if is_embeddings and corpus is None:
                    raise click.UsageError(f"--engine {engine} with an embeddings INPUT needs --corpus CORPUS "
                                           "(its read stage takes the ids and texts from the corpus)")
                if not is_embeddings and corpus is not None:
                    raise click.UsageError("--corpus is for an embeddings INPUT; INPUT is already a corpus")
                if is_embeddings:  # vectors from INPUT, matched to the corpus by id
                    options["embeddings"] = input_path
                    input_path = corpus
                result = _staged(input_path, output, engine, ray_address, gpus_per_actor, method=method, model=model,
                                 device=device, id_column=id_column, text_column=text_column, bucket_cap=bucket_cap,
                                 components_mode=components_mode, show_progress=not quiet, **options)
            elif is_embeddings:
                result = dedup_embeddings(input_path, output, corpus=corpus, id_column=id_column,
                                          text_column=text_column, method=method, model_dir=model,
                                          show_progress=not quiet, **options)
            else:
                if corpus is not None:
                    raise click.UsageError("--corpus is for an embeddings INPUT; INPUT is already a corpus")
                result = dedup_corpus(input_path, output, method=method, model=model, id_column=id_column,
                                      text_column=text_column, device=device, resume=resume,
                                      show_progress=not quiet, **options)
    except KeyboardInterrupt:
        if engine != "memory":
            click.echo(f"interrupted; run the same command to resume from the finished stages in {output / 'stages'}",
                       err=True)
            sys.exit(130)
        click.echo("interrupted; run the same command with --resume to reuse the finished encoding parts", err=True)
        sys.exit(130)
    for line in result.summary_lines():
        click.echo(line)
    clusters = sorted(result.clusters(), key=len, reverse=True)
    if show and clusters:
        click.echo(f"\nlargest clusters (representative first; {len(clusters):,} in all):")
        for group in clusters[:show]:
            head = ", ".join(str(x) for x in group[:6]) + (f", ... (+{len(group) - 6})" if len(group) > 6 else "")
            click.echo(f"  [{len(group)}] {head}")
    written = _written_since(output, before)
    click.echo(f"\nwrote {len(written)} file(s) in {output}:")
    for path in written:
        click.echo(f"  {path.name} ({path.stat().st_size:,} bytes)")


def _staged(input_path: str, output: Path, engine: str, ray_address: str | None, gpus_per_actor: float,
            **options: Any) -> Any:
    """Run the staged pipeline with the local or the Ray engine (``k`` applies to the memory engine only)."""
    from reformer_retrieval.pipeline import LocalEngine, dedup_pipeline

    options.pop("k", None)
    if engine == "ray":
        from reformer_retrieval.ray_engine import RayEngine, require_ray

        require_ray()
        runner: Any = RayEngine(address=ray_address, gpus_per_actor=gpus_per_actor)
    else:
        runner = LocalEngine()
    return dedup_pipeline(input_path, output, engine=runner, **options)


def _file_states(directory: Path) -> dict[str, tuple[int, int, int]]:
    """(inode, size, mtime) of every file directly in ``directory`` (empty if it does not exist)."""
    if not directory.is_dir():
        return {}
    return {p.name: (st.st_ino, st.st_size, st.st_mtime_ns) for p in directory.iterdir() if p.is_file()
            for st in [p.stat()]}


def _written_since(directory: Path, before: dict[str, tuple[int, int, int]]) -> list[Path]:
    """Files of ``directory`` that are new or were rewritten since ``before`` (atomic writes give a new inode)."""
    now = _file_states(directory)
    return [directory / name for name in sorted(now) if before.get(name) != now[name]]
