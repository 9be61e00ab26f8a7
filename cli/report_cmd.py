"""``reformer-retrieval report``: a self-contained HTML review page of a dedup output directory."""

from __future__ import annotations

import time
from pathlib import Path

import click

__all__ = ["report"]

_EPILOG = """\b
Examples:
  reformer-retrieval report dedup_out/                       # writes dedup_out/report.html
  reformer-retrieval report dedup_out/ -o review.html --corpus corpus.parquet --labels cluster
  reformer-retrieval report big_out/ --max-clusters 2000     # the 2,000 largest clusters
  reformer-retrieval report big_out/ --sample 500 --seed 1   # 500 random clusters

\b
OUT_DIR is the output directory of `dedup` (clusters.parquet, pairs.parquet, summary.json; its
embeddings.parquet, when kept, gives cosine scores and the pairs below the threshold). Texts come from
--corpus, else from the corpus the run recorded in summary.json. The page opens from disk, with no
network: summary, score histograms with the threshold (and the pairs just above and below it), the
precision-recall curve (--labels), clusters largest first with word diffs against the representative,
and "duplicate" / "not duplicate" marks exported as JSON Lines or CSV for
`eval dedup --marks` and `dedup --exclude-pairs`.
"""


@click.command("report", epilog=_EPILOG)
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="HTML file to write [OUT_DIR/report.html].")
@click.option("--corpus", default=None,
              help="Corpus of the texts (Parquet, JSON Lines or CSV; file, directory or glob) [the run's recorded corpus].")
@click.option("--id-column", default=None, help="Id column of the corpus [the run's, else id].")
@click.option("--text-column", default=None, help="Text column of the corpus [the run's, else text].")
@click.option("--labels", default=None, metavar="COLUMN",
              help="Ground-truth cluster column of the corpus: adds the precision-recall curve.")
@click.option("--max-clusters", type=click.IntRange(min=0), default=10_000, show_default=True,
              help="Show at most this many clusters with duplicates (largest first).")
@click.option("--sample", type=click.IntRange(min=1), default=None,
              help="Show a random sample of this many clusters with duplicates instead of the largest.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --sample and of the near-pair samples.")
@click.option("--max-members", type=click.IntRange(min=1), default=100, show_default=True,
              help="Members per cluster scored and diffed.")
@click.option("--context", type=click.IntRange(min=0), default=12, show_default=True,
              help="Equal words kept beside each change in a diff.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def report(out_dir: Path, output: Path | None, corpus: str | None, id_column: str | None, text_column: str | None,
           labels: str | None, max_clusters: int, sample: int | None, seed: int, max_members: int, context: int,
           quiet: bool) -> None:
    """Write an HTML review page of the dedup results in OUT_DIR."""
    import pyarrow as pa
    from reformer_retrieval.cli.errors import reported_as_click_errors

    from reformer_retrieval.corpus import CorpusError
    from reformer_retrieval.report import ReportOptions, gather_report, write_report

    options = ReportOptions(max_clusters=max_clusters, sample=sample, seed=seed, max_members=max_members,
                            context=context)
    start = time.perf_counter()
    with reported_as_click_errors(CorpusError, ValueError, OSError, pa.ArrowException):
        data = gather_report(out_dir, corpus=corpus, id_column=id_column, text_column=text_column, labels=labels,
                             options=options, show_progress=not quiet)
        path = write_report(data, output or out_dir / "report.html", options.chunk_clusters)
    size = path.stat().st_size
    per = f", {size / len(data.clusters):,.0f} bytes per cluster" if data.clusters else ""
    click.echo(f"{len(data.clusters):,} of {data.duplicate_clusters:,} clusters with duplicates; "
               f"{size / 1e6:.2f} MB{per}; {time.perf_counter() - start:.1f} s")
    for note in data.notes:
        click.echo(f"note: {note}")
    click.echo(f"wrote {path}")
