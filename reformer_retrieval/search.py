"""Search an index directory: by text (encoded with the index's model), by stored id, or by vectors.

Results are one flat Arrow table ``query_id, rank, id, score`` (rank 1 = best), which `format_hits`
prints as a table or JSON lines and `write_hits` saves as Parquet. A text query against an embedding
index needs the model the index was built with: a different model is refused with both model ids.
A MinHash index answers text queries by estimated Jaccard and needs no model.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from reformer_retrieval.atomic import atomic_path
from reformer_retrieval.indexes.base import IndexInputError, SearchResult, VectorIndex
from reformer_retrieval.indexes.minhash import MinHashIndex
from reformer_retrieval.indexes.store import IndexMismatchError, open_index

__all__ = ["FORMATS", "Searcher", "format_hits", "hits_to_dict", "read_queries", "write_hits"]

FORMATS = ("table", "json", "parquet")


class Searcher:
    """Answers queries against one index.

    Example:
        >>> s = Searcher.open("index_dir")                 # doctest: +SKIP
        >>> hits = s.search_texts(["some text"], k=5)      # doctest: +SKIP
        >>> print(format_hits(hits, "table"))              # doctest: +SKIP

    Attributes:
        index: The opened index (`VectorIndex` or `MinHashIndex`).
        encoder: The `Encoder` for text queries (loaded on first use when not given).
    """

    def __init__(self, index: Any, encoder: Any = None, model: str | Path | None = None, device: str = "auto") -> None:
        self.index = index
        self.encoder = encoder
        self._model, self._device = model, device
        if encoder is not None:
            self._check_encoder(encoder)

    @classmethod
    def open(
        cls, index_dir: str | Path, model: str | Path | None = None, device: str = "auto", encoder: Any = None,
        verify: bool = False,
    ) -> Searcher:
        """Open ``index_dir``; text queries will use ``encoder``, or the model at ``model`` (default: bundled).

        File sizes are checked against the manifest; ``verify`` also reads every file to compare its SHA-256
        (off by default: a large index is not re-read per search; ``index info --verify`` does it once).
        """
        return cls(open_index(index_dir, verify=verify), encoder=encoder, model=model, device=device)

    # ------------------------------------------------------------------ helpers
    def _check_encoder(self, encoder: Any) -> None:
        idx = self.index
        if isinstance(idx, MinHashIndex):
            return
        if idx.model_id is not None and encoder.model_id != idx.model_id:
            raise IndexMismatchError(
                f"the index was built from model {idx.model_id} (dim {idx.dim}), but the query encoder is model "
                f"{encoder.model_id} (dim {encoder.dim}); pass the index's model (--model DIR)"
            )
        if encoder.dim != idx.dim:
            raise IndexMismatchError(
                f"the index holds {idx.dim}-dim vectors (model {idx.model_id}), but the query encoder gives "
                f"{encoder.dim}-dim vectors (model {encoder.model_id})"
            )

    def _encoder(self) -> Any:
        if self.encoder is None:
            from reformer_retrieval.encode import Encoder, split_model_id

            channels = split_model_id(self.index.model_id)[1]  # queries get the channels the index holds
            encoder = Encoder.load(self._model, device=self._device, channels=channels)
            self._check_encoder(encoder)
            self.encoder = encoder
        return self.encoder

    # ------------------------------------------------------------------ queries
    def search_texts(
        self, texts: Sequence[str], k: int = 10, query_ids: Sequence[Any] | None = None,
        exclude: Sequence[Any] | None = None,
    ) -> pa.Table:
        """Top-``k`` hits of each text; ``exclude[q]`` (an id or None) is left out of query q's hits."""
        texts = list(texts)
        query_ids = list(range(len(texts))) if query_ids is None else list(query_ids)
        if len(query_ids) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(query_ids)} query ids")
        if isinstance(self.index, MinHashIndex):
            res = self.index.search_signatures(self.index.hasher.signatures(texts), k, exclude=exclude)
        else:
            vectors = self._encoder().encode(texts)
            res = self.index.search(vectors, k, exclude=exclude)
        return _hits_table(query_ids, res)

    def search_vectors(
        self, vectors: np.ndarray, k: int = 10, query_ids: Sequence[Any] | None = None,
        exclude: Sequence[Any] | None = None,
    ) -> pa.Table:
        """Top-``k`` hits of each query vector (embedding indexes only)."""
        if not isinstance(self.index, VectorIndex):
            raise IndexInputError("a MinHash index is searched by text, not by vectors")
        vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        query_ids = list(range(len(vectors))) if query_ids is None else list(query_ids)
        return _hits_table(query_ids, self.index.search(vectors, k, exclude=exclude))

    def search_ids(self, ids: Sequence[Any], k: int = 10, exclude_self: bool = True) -> pa.Table:
        """Top-``k`` hits of documents already in the index, by their stored vectors (or signatures).

        With ``exclude_self`` each document's own entry is left out (the ``k`` others are returned).
        """
        ids = list(ids)
        exclude = ids if exclude_self else None
        if isinstance(self.index, MinHashIndex):
            res = self.index.search_signatures(self.index.signatures_of(ids), k, exclude=exclude)
        else:
            res = self.index.search(self.index.reconstruct(ids), k, exclude=exclude)
        return _hits_table(ids, res)


def _id_type(values: Sequence[Any]) -> pa.DataType:
    return pa.int64() if values and all(isinstance(v, (int, np.integer)) for v in values) else pa.string()


def _hits_table(query_ids: Sequence[Any], res: SearchResult) -> pa.Table:
    q, rank, hit, score = [], [], [], []
    for qi, (qid, hits) in enumerate(zip(query_ids, res.ids)):
        for r, doc in enumerate(hits):
            q.append(qid)
            rank.append(r + 1)
            hit.append(doc)
            score.append(float(res.scores[qi, r]))
    qtype = _id_type(list(query_ids))
    return pa.table({
        "query_id": pa.array([v if qtype == pa.int64() else str(v) for v in q], qtype),
        "rank": pa.array(rank, pa.int32()),
        "id": pa.array(hit, _id_type(hit) if hit else pa.string()),
        "score": pa.array(score, pa.float32()),
    })


def hits_to_dict(hits: pa.Table) -> dict[Any, list[Any]]:
    """query id -> ranked hit ids, from a hits table (rows in any order)."""
    out: dict[Any, list[tuple[int, Any]]] = {}
    for qid, rank, doc in zip(*(hits.column(c).to_pylist() for c in ("query_id", "rank", "id"))):
        out.setdefault(qid, []).append((rank, doc))
    return {qid: [d for _, d in sorted(v, key=lambda x: x[0])] for qid, v in out.items()}


def format_hits(hits: pa.Table, fmt: str = "table") -> str:
    """Hits as an aligned text table (``"table"``) or JSON lines, one object per query (``"json"``)."""
    if fmt == "json":
        lines = []
        grouped: dict[Any, list[dict[str, Any]]] = {}
        for qid, rank, doc, score in zip(*(hits.column(c).to_pylist() for c in ("query_id", "rank", "id", "score"))):
            grouped.setdefault(qid, []).append({"rank": rank, "id": doc, "score": round(float(score), 6)})
        for qid, rows in grouped.items():
            lines.append(json.dumps({"query_id": qid, "hits": rows}, ensure_ascii=False))
        return "\n".join(lines)
    if fmt != "table":
        raise ValueError(f"unknown output format {fmt!r}; choose one of {', '.join(FORMATS)}")
    rows = [("query", "rank", "score", "id")]
    for qid, rank, doc, score in zip(*(hits.column(c).to_pylist() for c in ("query_id", "rank", "id", "score"))):
        rows.append((str(qid), str(rank), "nan" if math.isnan(score) else f"{score:.4f}", str(doc)))
    if len(rows) == 1:
        return "(no hits)"
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join(
        "  ".join(cell.rjust(w) if i in (1, 2) else cell.ljust(w) for i, (cell, w) in enumerate(zip(r, widths))).rstrip()
        for r in rows
    )


def write_hits(hits: pa.Table, path: str | Path) -> Path:
    """Save a hits table as Parquet, atomically."""
    path = Path(path)
    with atomic_path(path, suffix=".parquet") as tmp:
        pq.write_table(hits, tmp)
    return path


def read_queries(
    path: str | Path, id_column: str | None = None, text_column: str = "text", exclude_column: str | None = None
) -> tuple[list[Any], list[str], list[Any] | None]:
    """(query ids, texts, ids to exclude or None) from a query set: Parquet, JSON Lines or CSV (a file,
    directory or glob; dotted names reach nested fields).

    ``id_column`` defaults to ``query_id`` if present, else ``id``. Null or empty texts are refused
    with the query id named.
    """
    from reformer_retrieval.corpus_formats import (
        CorpusError,
        iter_record_batches,
        read_file_schema,
        resolve_field,
        resolve_sources,
    )

    try:
        if id_column is None:
            schema = read_file_schema(resolve_sources(path)[0])
            id_column = "query_id" if schema is not None and resolve_field(schema, "query_id") else "id"
        columns = {"id": id_column, "text": text_column, **({"exclude": exclude_column} if exclude_column else {})}
        ids: list[Any] = []
        texts: list[Any] = []
        exclude: list[Any] | None = [] if exclude_column else None
        for _, _, batch in iter_record_batches(path, columns, batch_size=65536):
            ids.extend(batch.column("id").to_pylist())
            texts.extend(batch.column("text").to_pylist())
            if exclude is not None:
                exclude.extend(batch.column("exclude").to_pylist())
    except CorpusError as exc:
        raise ValueError(str(exc)) from None
    for qid, text in zip(ids, texts):
        if qid is None:
            raise ValueError(f"{path}: a query has a null {id_column!r}")
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{path}: query {qid!r} has a null or empty {text_column!r}")
    return ids, texts, exclude
