"""``reformer-retrieval search``: the documents of an index most like a text, a file, a stored id or a query set."""

from __future__ import annotations

from pathlib import Path

import click
from reformer_retrieval.cli.options import device_option

__all__ = ["search"]

_EPILOG = """\b
Examples:
  reformer-retrieval search idx/ "the text to look for" -k 5
  reformer-retrieval search idx/ --file report.txt --format json
  reformer-retrieval search idx/ --id doc-17 --id doc-42             # own entry excluded
  reformer-retrieval search idx/ --queries queries.parquet --exclude-column doc_id -k 100 \\
      --format parquet -o hits.parquet

\b
Text queries are encoded with the model the index was built from (--model DIR if it is not the
bundled default; another model is refused). Output: query, rank, score, id; JSON lines hold one
object per query; Parquet (-o FILE) holds query_id, rank, id, score.
"""


@click.command("search", epilog=_EPILOG)
@click.argument("index_dir", type=click.Path(file_okay=False, path_type=Path))
@click.argument("query", required=False)
@click.option("--file", "files", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="A text file whose content is a query (repeatable).")
@click.option("--id", "ids", multiple=True, help="Search with the stored vector of this indexed id (repeatable).")
@click.option("--queries", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A query set: Parquet, JSON Lines or CSV (id and text columns).")
@click.option("--query-id-column", default=None, help="Id column of --queries [query_id if present, else id].")
@click.option("--query-text-column", default="text", show_default=True, help="Text column of --queries.")
@click.option("--exclude-column", default=None,
              help="Column of --queries naming a document to leave out of that query's hits (its own).")
@click.option("-k", "--k", "k", type=click.IntRange(min=1), default=10, show_default=True, help="Hits per query.")
@click.option("--exclude-self/--include-self", default=True, show_default=True,
              help="With --id: leave the document itself out of its hits.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "parquet"]), default="table",
              show_default=True, help="Output format.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the output here instead of printing it (required for parquet).")
@click.option("--model", type=click.Path(file_okay=False, path_type=Path), default=None, metavar="DIR",
              help="Model that built the index (default: the bundled model).")
@device_option(help="Where to encode.")
@click.option("--ef-search", type=click.IntRange(min=1), default=None, help="HNSW search beam for this search.")
@click.option("--nprobe", type=click.IntRange(min=1), default=None, help="IVF lists visited for this search.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="FAISS threads [default: all cores].")
def search(index_dir: Path, query: str | None, files: tuple[Path, ...], ids: tuple[str, ...], queries: Path | None,
           query_id_column: str | None, query_text_column: str, exclude_column: str | None, k: int,
           exclude_self: bool, fmt: str, output: Path | None, model: Path | None, device: str,
           ef_search: int | None, nprobe: int | None, threads: int | None) -> None:
    """Top-k documents of INDEX_DIR for QUERY (a text), --file, --id or --queries."""
    import pyarrow as pa
    from reformer_retrieval.cli.errors import reported_as_click_errors
    from reformer_retrieval.indexes import IndexDirectoryError, IndexInputError, set_threads

    from reformer_retrieval.atomic import atomic_write_text
    from reformer_retrieval.checkpoint import ModelDirectoryError
    from reformer_retrieval.corpus import CorpusError
    from reformer_retrieval.search import Searcher, format_hits, read_queries, write_hits

    given = sum([query is not None, bool(files), bool(ids), queries is not None])
    if given != 1:
        raise click.UsageError("give exactly one of QUERY, --file, --id or --queries")
    if fmt == "parquet" and output is None:
        raise click.UsageError("--format parquet needs -o FILE")
    errors = (CorpusError, ModelDirectoryError, IndexDirectoryError, IndexInputError, ValueError, OSError,
              UnicodeDecodeError, pa.ArrowException)
    with reported_as_click_errors(*errors):
        set_threads(threads)
        searcher = Searcher.open(index_dir, model=model, device=device)
        idx = searcher.index
        if ef_search is not None and hasattr(idx, "ef_search"):
            idx.ef_search = ef_search
        if nprobe is not None and hasattr(idx, "nprobe"):
            idx.nprobe = nprobe
        if ids:
            id_type = getattr(idx.idmap, "id_type", "string")
            keys = [int(x) for x in ids] if id_type == "int" else list(ids)
            hits = searcher.search_ids(keys, k, exclude_self=exclude_self)
        elif queries is not None:
            qids, texts, exclude = read_queries(queries, query_id_column, query_text_column, exclude_column)
            hits = searcher.search_texts(texts, k, query_ids=qids, exclude=exclude)
        elif files:
            texts = []
            for path in files:
                text = path.read_text(encoding="utf-8")
                if not text.strip():
                    raise ValueError(f"{path} is empty")
                texts.append(text)
            hits = searcher.search_texts(texts, k, query_ids=[str(p) for p in files])
        else:
            assert query is not None
            if not query.strip():
                raise ValueError("the query text is empty")
            hits = searcher.search_texts([query], k, query_ids=["query"])
        if fmt == "parquet":
            assert output is not None
            write_hits(hits, output)
            click.echo(f"wrote {hits.num_rows:,} hits to {output}")
            return
        text = format_hits(hits, fmt)
    if output is not None:
        atomic_write_text(output, text + "\n")
        click.echo(f"wrote {hits.num_rows:,} hits to {output}")
    else:
        click.echo(text)
