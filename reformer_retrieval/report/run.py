"""Read a dedup output directory (``clusters.parquet``, ``pairs.parquet``, ``summary.json``) and its texts.

Only the files are read, so a report can be made from any run that wrote them, whichever engine did.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["DedupRun", "load_corpus_columns", "load_run"]

_CLUSTER_COLUMNS = ("id", "cluster_id", "is_representative")
_PAIR_COLUMNS = ("id_a", "id_b", "score")


@dataclass
class DedupRun:
    """One dedup run, as its output directory holds it.

    Attributes:
        out_dir: The directory.
        summary: ``summary.json``.
        ids: Every document id (``clusters.parquet`` order).
        cluster_id: Cluster of each document.
        is_representative: One True per cluster.
        pairs: ``pairs.parquet`` (``id_a, id_b, score`` and, where written, ``method, cosine, jaccard``).
        embeddings_path: ``embeddings.parquet`` of the run, if it kept one.
    """

    out_dir: Path
    summary: dict[str, Any]
    ids: list[Any]
    cluster_id: np.ndarray
    is_representative: np.ndarray
    pairs: pa.Table
    embeddings_path: Path | None

    @property
    def thresholds(self) -> dict[str, float]:
        """``{"cosine": t, "jaccard": t}`` (the tests the run used)."""
        return {k: float(v) for k, v in (self.summary.get("thresholds") or {}).items()}

    def pair_column(self, name: str) -> np.ndarray:
        """A float column of the pairs (NaN where null or absent)."""
        if name not in self.pairs.column_names:
            return np.full(self.pairs.num_rows, np.nan)
        return np.asarray(self.pairs.column(name).to_numpy(zero_copy_only=False), dtype=np.float64)


def _read(path: Path, columns: tuple[str, ...], optional: tuple[str, ...] = ()) -> pa.Table:
    if not path.is_file():
        raise ValueError(f"{path}: not found (is {path.parent} a dedup output directory?)")
    try:
        names = pq.read_schema(path).names
    except (pa.ArrowException, OSError) as exc:
        raise ValueError(f"{path}: cannot read ({str(exc).strip().splitlines()[0]})") from None
    missing = [c for c in columns if c not in names]
    if missing:
        raise ValueError(f"{path}: no column {missing[0]!r} (has {', '.join(names)})")
    return pq.read_table(path, columns=[*columns, *(c for c in optional if c in names)])


def load_run(out_dir: str | Path) -> DedupRun:
    """Read a dedup output directory; raises ``ValueError`` naming a missing or malformed file."""
    out = Path(out_dir)
    if not out.is_dir():
        raise ValueError(f"{out}: not a directory")
    summary_path = out / "summary.json"
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{summary_path}: not found (is {out} a dedup output directory?)") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{summary_path}: not JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(summary, dict) or "documents" not in summary:
        raise ValueError(f"{summary_path}: no 'documents' count; not a dedup summary")
    clusters = _read(out / "clusters.parquet", _CLUSTER_COLUMNS)
    pairs = _read(out / "pairs.parquet", _PAIR_COLUMNS, ("method", "cosine", "jaccard"))
    emb = out / "embeddings.parquet"
    return DedupRun(
        out_dir=out, summary=summary, ids=clusters.column("id").to_pylist(),
        cluster_id=np.asarray(clusters.column("cluster_id").to_numpy(), dtype=np.int64),
        is_representative=np.asarray(clusters.column("is_representative").to_numpy(zero_copy_only=False), bool),
        pairs=pairs, embeddings_path=emb if emb.is_file() else None,
    )


def load_corpus_columns(
    corpus: Any, ids: set[Any], id_column: str, columns: list[str]
) -> dict[str, dict[Any, Any]]:
    """``{column: {id: value}}`` for the documents of ``ids`` (ids of the corpus not in ``ids`` skipped).

    ``corpus`` is anything a corpus argument takes (Parquet, JSON Lines or CSV; a file, a directory, a
    glob, a ``file://`` URI or a list: `reformer_retrieval.corpus_formats.resolve_sources`), read one
    batch at a time so only the wanted rows are held. Raises `CorpusError` naming the file and a
    missing column.
    """
    from reformer_retrieval.corpus_formats import resolve_sources, scan_file

    names = {"id": id_column, **{f"c{j}": col for j, col in enumerate(columns)}}
    out: dict[str, dict[Any, Any]] = {c: {} for c in columns}
    for path in resolve_sources(corpus):
        for batch in scan_file(path, names, batch_size=4096):
            got = batch.column(0).to_pylist()
            keep = [i for i, d in enumerate(got) if d in ids]
            if not keep:
                continue
            for j, col in enumerate(columns, start=1):
                values = batch.column(j).to_pylist()
                target = out[col]
                for i in keep:
                    target.setdefault(got[i], values[i])
    return out
