"""``reformer-retrieval encode``: a corpus (Parquet, JSON Lines or CSV) -> an embeddings Parquet file."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from reformer_retrieval.cli.options import device_option

__all__ = ["encode"]

_EPILOG = """\b
Examples:
  reformer-retrieval encode examples/sample.parquet -o emb.parquet
  reformer-retrieval encode 'shards/*.parquet' -o emb.parquet --model my_model/ --device cuda
  reformer-retrieval encode corpus/ -o emb.parquet --long-docs window --resume
  reformer-retrieval encode 'dolma/*.jsonl.gz' -o emb.parquet --text-column text --id-column metadata.id
  reformer-retrieval encode s3://bucket/corpus/ -o emb.parquet --engine ray --ray-address auto --gpus-per-actor 1

\b
CORPUS is a Parquet, JSON Lines (.jsonl, .ndjson, .json; also .gz/.zst/.bz2) or CSV (.csv, .tsv; also
compressed) file, a directory of such shards, a quoted glob or a file:// URI; dotted column names reach
nested fields (metadata.body). Rows with a null id, a null/empty/whitespace-only text are skipped and
listed in EMB.skipped.parquet (id, reason, file, row). A part of the work is saved at least every
--part-seconds; interrupted (Ctrl-C, crash)? Run the same command with --resume: finished parts are
reused, only the rest is encoded, and the output is the same as that of an uninterrupted run.
"""


@click.command("encode", epilog=_EPILOG)
@click.argument("corpus", metavar="CORPUS")
@click.option("-o", "--output", "output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              metavar="EMB.parquet", help="Embeddings file to write (id, embedding, n_tokens, truncated).")
@click.option("--model", "model", type=click.Path(file_okay=False, path_type=Path), default=None,
              metavar="DIR", help="Model directory (default: the bundled default model).")
@click.option("--id-column", default="id", show_default=True, help="Id column of the corpus.")
@click.option("--text-column", default="text", show_default=True, help="Text column of the corpus.")
@device_option()
@click.option("--dtype", default=None, type=click.Choice(["float32", "bfloat16", "float16"]),
              help="Compute dtype [default: float32 on CPU, bfloat16 on GPU].")
@click.option("--batch-tokens", type=click.IntRange(min=1), default=None,
              help="Padded tokens per forward pass [default: 65536 on CPU, 262144 on GPU].")
@click.option("--max-tokens", type=click.IntRange(min=1), default=65_536, show_default=True,
              help="Tokens read per document (or per window), at most the model's max_len.")
@click.option("--long-docs", type=click.Choice(["truncate", "window"]), default="truncate", show_default=True,
              help="Longer documents: cut at --max-tokens (flagged), or read whole as overlapping windows.")
@click.option("--on-duplicate", type=click.Choice(["error", "keep_first"]), default="error", show_default=True,
              help="A repeated id: stop with an error, or keep the first row and list the others as skipped.")
@click.option("--channels", type=click.Choice(["both", "contextual", "lexical"]), default="both", show_default=True,
              help="Vectors of both channels, the contextual (Reformer) channel alone, or the lexical (hashed "
                   "n-gram) channel alone (no Reformer pass; read over the whole document). The model id in "
                   "EMB.parquet says which (e.g. 'aaa7ca85767a:lexical').")
@click.option("--resume", is_flag=True, help="Continue an interrupted run (from EMB.parquet.parts/).")
@click.option("--part-docs", type=click.IntRange(min=1), default=4096, show_default=True,
              help="Documents per resumable part (a part also closes at about 1M tokens).")
@click.option("--part-seconds", type=click.FloatRange(min=0), default=60.0, show_default=True,
              help="Save a resumable part at least this often (seconds of work; a kill loses about this much).")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this process (resumable parts); ray: encoder actors on Ray Data (every corpus format local reads).")
@click.option("--ray-address", default=None, metavar="ADDR",
              help="Ray cluster to join with --engine ray (e.g. auto); default: a local Ray on this machine's cores.")
@click.option("--actors", type=click.IntRange(min=1), default=None, help="Encoder actors with --engine ray [CPUs].")
@click.option("--gpus-per-actor", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="GPUs per encoder actor with --engine ray.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def encode(
    corpus: str,
    output: Path,
    model: Path | None,
    id_column: str,
    text_column: str,
    device: str,
    dtype: str | None,
    batch_tokens: int | None,
    max_tokens: int,
    long_docs: str,
    on_duplicate: str,
    channels: str,
    resume: bool,
    part_docs: int,
    part_seconds: float,
    engine: str,
    ray_address: str | None,
    actors: int | None,
    gpus_per_actor: float,
    quiet: bool,
) -> None:
    """Embed every document of CORPUS (Parquet, JSON Lines or CSV) into EMB.parquet (one unit vector per id)."""
    from reformer_retrieval.cli.errors import reported_as_click_errors

    from reformer_retrieval.checkpoint import ModelDirectoryError
    from reformer_retrieval.corpus import CorpusError
    from reformer_retrieval.encode import Encoder, parts_dir_for

    try:
        with reported_as_click_errors(CorpusError, ModelDirectoryError, ValueError, TypeError, OSError, RuntimeError):
            if engine == "ray":
                from reformer_retrieval.ray_engine import encode_corpus

                for line in encode_corpus(
                    corpus, output, model, id_column, text_column, device=device, address=ray_address, actors=actors,
                    gpus_per_actor=gpus_per_actor, on_duplicate=on_duplicate, dtype=dtype, batch_tokens=batch_tokens,
                    max_tokens=max_tokens, long_docs=long_docs, channels=channels,
                ):
                    click.echo(line)
                return
            encoder = Encoder.load(
                model,
                device=device,
                dtype=dtype,
                batch_tokens=batch_tokens,
                max_tokens=max_tokens,
                long_docs=long_docs,  # type: ignore[arg-type]
                channels=channels,  # type: ignore[arg-type]
            )
            summary = encoder.encode_parquet(
                corpus,
                output,
                id_column=id_column,
                text_column=text_column,
                resume=resume,
                on_duplicate=on_duplicate,  # type: ignore[arg-type]
                show_progress=not quiet,
                part_docs=part_docs,
                part_seconds=part_seconds,
            )
    except KeyboardInterrupt:
        parts = parts_dir_for(output)
        hint = f"; finished parts are kept in {parts}: run the same command with --resume" if parts.exists() else ""
        click.echo(f"interrupted{hint}", err=True)
        sys.exit(130)
    for line in summary.lines():
        click.echo(line)
