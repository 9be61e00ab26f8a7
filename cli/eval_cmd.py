"""``reformer-retrieval eval dedup | search``: quality against labels (clusters) or qrels."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from reformer_retrieval.cli.errors import reported_as_click_errors
from reformer_retrieval.cli.options import device_option

if TYPE_CHECKING:  # numpy is only named in annotations: keep it off the CLI's start-up
    import numpy as np

__all__ = ["eval_group"]


def _errors() -> tuple[type[BaseException], ...]:
    """The exceptions every ``eval`` verb reports as a one-line error."""
    import pyarrow as pa
    from reformer_retrieval.indexes import IndexDirectoryError, IndexInputError

    from reformer_retrieval.checkpoint import ModelDirectoryError
    from reformer_retrieval.corpus import CorpusError

    return (CorpusError, ModelDirectoryError, IndexDirectoryError, IndexInputError, ValueError, OSError,
            pa.ArrowException)


def _parse_sweep(spec: str) -> list[float]:
    """``START:STOP:STEP`` (inclusive) or a comma list."""
    try:
        if ":" in spec:
            start, stop, step = (float(x) for x in spec.split(":"))
            if step <= 0 or stop < start:
                raise ValueError
            n = round((stop - start) / step)
            return [round(start + i * step, 10) for i in range(n + 1)]
        return [float(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"{spec!r}: use START:STOP:STEP (e.g. 0.80:0.99:0.01) or a list 0.8,0.9") from None


def _write_json(path: Path | None, payload: dict[str, Any]) -> None:
    if path is None:
        return
    from reformer_retrieval.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str))
    click.echo(f"wrote {path}")


@click.group("eval")
def eval_group() -> None:
    """Measure dedup against a cluster label column, or search against qrels."""


_DEDUP_EPILOG = """\b
Examples:
  reformer-retrieval eval dedup labelled.parquet --clusters out/clusters.parquet
  reformer-retrieval eval dedup labelled.parquet --embeddings emb.parquet --sweep 0.80:0.99:0.01 --plot pr.png
  reformer-retrieval eval dedup labelled.parquet --method minhash --sweep 0.1:0.9:0.05
  reformer-retrieval eval dedup labelled.parquet --method hybrid --model my_model/ --minhash-threshold 0.3
  reformer-retrieval eval dedup --marks marks.jsonl    # reviewer marks exported by `report`

\b
LABELLED is a corpus with id, text and a label column (documents with the same label are
near-duplicates). With --clusters, that clustering is scored; otherwise dedup runs once at the lowest
swept threshold and every threshold is scored (ARI, pairwise precision / recall / F1). The swept
threshold is the cosine (embedding, hybrid) or the Jaccard (minhash). With --marks (no LABELLED), the
precision of the reviewed run on the pairs it merged that a reviewer marked, and the marked duplicates
it kept apart.
"""


@eval_group.command("dedup", epilog=_DEDUP_EPILOG)
@click.argument("labelled", type=click.Path(dir_okay=False, path_type=Path), required=False)
@click.option("--marks", "marks_path", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Score reviewer marks (JSON Lines or CSV from `report`) instead of labels.")
@click.option("--label-column", default="cluster", show_default=True, help="Ground-truth cluster column.")
@click.option("--id-column", default="id", show_default=True, help="Id column.")
@click.option("--text-column", default="text", show_default=True, help="Text column.")
@click.option("--clusters", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Score this clusters.parquet (from `dedup`) instead of running dedup.")
@click.option("--method", type=click.Choice(["embedding", "minhash", "hybrid"]), default="embedding",
              show_default=True, help="Dedup method to run.")
@click.option("--embeddings", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Embeddings of LABELLED (else it is encoded with --model).")
@click.option("--model", type=click.Path(file_okay=False, path_type=Path), default=None, metavar="DIR",
              help="Model directory (default: the bundled model).")
@device_option(help="Where to encode.")
@click.option("--sweep", default=None, metavar="START:STOP:STEP",
              help="Thresholds to score [default: the default threshold only].")
@click.option("--threshold", type=float, default=None, help="A single threshold (instead of --sweep).")
@click.option("--minhash-threshold", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              help="Jaccard threshold of the lexical half of hybrid [0.2].")
@click.option("--index", "index_kind", type=click.Choice(["flat", "hnsw", "ivfpq", "lsh"]), default="flat",
              show_default=True, help="Embedding candidate index.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="FILE.png",
              help="Save a precision-recall curve (needs matplotlib: pip install 'reformer-retrieval[plot]').")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the metrics as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def eval_dedup(labelled: Path | None, marks_path: Path | None, label_column: str, id_column: str, text_column: str, clusters: Path | None,
               method: str, embeddings: Path | None, model: Path | None, device: str, sweep: str | None,
               threshold: float | None, minhash_threshold: float | None, index_kind: str, plot: Path | None,
               json_path: Path | None, quiet: bool) -> None:
    """Score near-duplicate clusters against the labels of LABELLED."""
    from reformer_retrieval.dedup import ThresholdModelMismatch, default_threshold
    from reformer_retrieval.evaluate import (
        evaluate_clusters,
        format_sweep,
        plot_pr_curve,
        read_labels,
        sweep_dedup,
    )

    if (labelled is None) == (marks_path is None):
        raise click.UsageError("give one of LABELLED (a labelled corpus) and --marks MARKS")
    if marks_path is not None:
        _eval_marks(marks_path, json_path)
        return
    assert labelled is not None
    with reported_as_click_errors(ImportError, *_errors()):
        labels = read_labels(labelled, id_column, label_column)
        if clusters is not None:
            m = evaluate_clusters(clusters, labels)
            click.echo(f"ARI {m.ari:.4f}  precision {m.precision:.4f}  recall {m.recall:.4f}  F1 {m.f1:.4f}  "
                       f"({m.predicted_pairs:,} predicted pairs, {m.true_pairs:,} true, {m.n_clusters:,} clusters)")
            _write_json(json_path, {"clusters": str(clusters), **m.to_dict()})
            return
        emb_model = None  # the model that made --embeddings: its default threshold, not another model's
        if embeddings is not None and method != "minhash":
            from reformer_retrieval.corpus import read_embeddings_metadata

            emb_model = read_embeddings_metadata(embeddings)["model_id"]
        try:
            default = default_threshold(method, model, model_id=emb_model)
        except ThresholdModelMismatch:
            if sweep is None and threshold is None:
                raise
            default = None  # thresholds given: no default to mark
        if sweep is not None and threshold is not None:
            raise click.UsageError("give --sweep or --threshold, not both")
        thresholds = _parse_sweep(sweep) if sweep else [threshold if threshold is not None else default]
        ids, texts, vectors = _load(labelled, id_column, text_column, method, embeddings, model, device, quiet)
        missing = [d for d in ids if d not in labels]
        if missing:
            raise ValueError(f"{labelled}: id {missing[0]!r} has no {label_column!r} label")
        rows, result = sweep_dedup(ids, [labels[d] for d in ids], thresholds, method=method, vectors=vectors,
                                   texts=texts, minhash_threshold=minhash_threshold, index=index_kind,
                                   show_progress=not quiet)
        click.echo(f"{method} on {labelled} ({len(ids):,} documents, {len(set(labels.values())):,} labels):")
        click.echo(format_sweep(rows, mark=default))
        if plot is not None:
            plot_pr_curve({method: rows}, plot, title=f"{labelled.name}: {method}")
            click.echo(f"wrote {plot}")
        best = max(rows, key=lambda r: r.f1)
        _write_json(json_path, {"method": method, "default_threshold": default, "best_f1": best.to_dict(),
                                "sweep": [r.to_dict() for r in rows], "seconds": result.summary.get("seconds")})


def _eval_marks(marks_path: Path, json_path: Path | None) -> None:
    """Precision of a reviewed run on its marked pairs (`reformer_retrieval.marks.marks_precision`)."""
    from reformer_retrieval.marks import marks_precision, read_marks

    with reported_as_click_errors(ValueError, OSError):
        m = marks_precision(read_marks(marks_path))
    precision = "n/a (no merged pair marked)" if m.precision is None else f"{m.precision:.4f}"
    click.echo(f"{m.marked:,} marked pairs: precision {precision} on the {m.merged:,} the run merged "
               f"({m.merged_duplicates:,} marked duplicate); {m.missed_duplicates:,} marked duplicates kept apart"
               + (f"; {m.unknown_merged:,} without a merged flag (not counted)" if m.unknown_merged else ""))
    _write_json(json_path, {"marks": str(marks_path), **m.to_dict()})


def _load(labelled: Path, id_column: str, text_column: str, method: str, embeddings: Path | None,
          model: Path | None, device: str, quiet: bool) -> tuple[list[Any], list[str] | None, np.ndarray | None]:
    """Ids, texts (when the method needs them) and vectors (when it needs them) of the labelled corpus."""
    from reformer_retrieval.corpus import read_embeddings, read_texts

    ids, texts, _ = read_texts(labelled, id_column, text_column)
    vectors = None
    if method != "minhash":
        if embeddings is not None:
            table = read_embeddings(embeddings)
            position = {d: i for i, d in enumerate(table.ids)}
            missing = [d for d in ids if d not in position]
            if missing:
                raise ValueError(f"the embeddings lack id {missing[0]!r} of {labelled}")
            vectors = table.vectors[[position[d] for d in ids]]
        else:  # encoded in memory, in the order of ids
            from reformer_retrieval.encode import Encoder

            encoder = Encoder.load(model, device=device)
            vectors, _, _ = encoder.encode_with_info(texts, show_progress=not quiet)
    return ids, (texts if method != "embedding" else None), vectors


_SEARCH_EPILOG = """\b
Examples:
  reformer-retrieval eval search queries.parquet qrels.parquet --index idx/ --exclude-column doc_id
  reformer-retrieval eval search queries.parquet qrels.parquet --results hits.parquet --exclude-column doc_id

\b
QUERIES has query_id and text (and optionally the query's own doc_id); QRELS has query_id, doc_id,
relevance. Reports recall@k, MRR and nDCG@10; --exclude-column removes each query's own document
from its hits and its qrels.
"""


@eval_group.command("search", epilog=_SEARCH_EPILOG)
@click.argument("queries", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("qrels", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--index", "index_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Index to search (needs the index's model for text queries).")
@click.option("--results", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Score saved hits (query_id, rank, id) instead of searching.")
@click.option("--model", type=click.Path(file_okay=False, path_type=Path), default=None, metavar="DIR",
              help="Model that built the index (default: the bundled model).")
@device_option(help="Where to encode.")
@click.option("--query-id-column", default=None, help="Query id column [query_id if present, else id].")
@click.option("--query-text-column", default="text", show_default=True, help="Query text column.")
@click.option("--exclude-column", default=None, help="Column of QUERIES naming each query's own document.")
@click.option("--ks", default="1,10,100", show_default=True, help="Cut-offs of recall@k.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the metrics as JSON.")
def eval_search(queries: Path, qrels: Path, index_dir: Path | None, results: Path | None, model: Path | None,
                device: str, query_id_column: str | None, query_text_column: str, exclude_column: str | None,
                ks: str, json_path: Path | None) -> None:
    """Score search results for QUERIES against QRELS."""
    import pyarrow.parquet as pq

    from reformer_retrieval.evaluate import read_qrels, search_metrics
    from reformer_retrieval.search import Searcher, hits_to_dict, read_queries

    if (index_dir is None) == (results is None):
        raise click.UsageError("give --index INDEX_DIR or --results HITS.parquet")
    try:
        cutoffs = sorted({int(x) for x in ks.split(",") if x.strip()})
        if not cutoffs or min(cutoffs) < 1:
            raise ValueError
    except ValueError:
        raise click.BadParameter(f"--ks {ks!r}: a comma list of positive integers") from None
    with reported_as_click_errors(*_errors()):
        qids, texts, own = read_queries(queries, query_id_column, query_text_column, exclude_column)
        judged = read_qrels(qrels)
        exclude = dict(zip(qids, own)) if own is not None else None
        if results is not None:
            hits = hits_to_dict(pq.read_table(results, columns=["query_id", "rank", "id"]))
        else:
            assert index_dir is not None
            searcher = Searcher.open(index_dir, model=model, device=device)
            table = searcher.search_texts(texts, max(cutoffs), query_ids=qids,
                                          exclude=own)
            hits = hits_to_dict(table)
        metrics = search_metrics(hits, judged, ks=cutoffs, exclude=exclude)
    click.echo(f"{metrics['queries']:,} queries with relevant documents"
               + (f" ({metrics['queries_without_relevant']:,} without, skipped)"
                  if metrics["queries_without_relevant"] else ""))
    click.echo("| metric | value |\n|---|---|")
    for key, value in metrics.items():
        if key.startswith(("recall@", "mrr", "ndcg@")):
            click.echo(f"| {key} | {value:.4f} |")
    _write_json(json_path, metrics)
