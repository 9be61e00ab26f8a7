"""Stage ``embed``: read shards -> ``row``, ``embedding`` (float32 x dim, unit length), ``n_tokens``, ``truncated``.

Each shard's valid texts go through `Encoder.encode_with_info` in one call, so a shard's vectors are the
same bits whichever engine (or process, or Ray actor) encodes it. The encoder is loaded once per process
or actor (`EmbedTask.setup`).

`VectorsTask` fills the same stage from an embeddings dataset made beforehand (the format `encode` writes:
``id``, ``embedding``, ``n_tokens``, ``truncated`` and the ``model_id`` / ``dim`` metadata), matching rows
by id, so a corpus already encoded is deduplicated without its encoder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from reformer_retrieval.corpus import CorpusError, _check_embeddings_schema
from reformer_retrieval.corpus_formats import first_line
from reformer_retrieval.pipeline.read import open_corpus
from reformer_retrieval.pipeline.runner import ShardTask
from reformer_retrieval.pipeline.sketch import read_valid

__all__ = ["EmbedTask", "VectorsTask", "embeddings_files"]


class EmbedTask(ShardTask):
    """Embeddings of each read shard.

    Args:
        read_dir: The read stage's directory.
        n_shards: Its shard count.
        model: Model directory (None: the bundled default).
        device: Where to encode (``"cpu"``, ``"cuda"``, ``"auto"``).
        encoder_options: Further `Encoder.load` arguments (``dtype``, ``batch_tokens``, ``max_tokens``, ...).
        model_id: The model's fingerprint (part of this stage's fingerprint).
    """

    name = "embed"
    stateful = True

    def __init__(self, read_dir: str | Path, n_shards: int, model: str | Path | None, device: str,
                 encoder_options: dict[str, Any] | None, model_id: str) -> None:
        self.read_dir, self._n = str(read_dir), int(n_shards)
        self.model = None if model is None else str(model)
        self.device, self.encoder_options, self.model_id = device, dict(encoder_options or {}), model_id
        self._state_encoder: Any = None

    def n_shards(self) -> int:
        """One per read shard."""
        return self._n

    def settings(self) -> dict[str, Any]:
        """The model, the encoding options and the device (vectors may differ in the last bits across devices)."""
        return {"model_id": self.model_id, "options": self.encoder_options, "device": self.device}

    def setup(self) -> None:
        """Load the encoder (once per process / actor)."""
        from reformer_retrieval.encode import Encoder

        self._state_encoder = Encoder.load(self.model, device=self.device, **self.encoder_options)

    def run(self, index: int) -> tuple[pa.Table, dict[str, Any]]:
        """Vectors of read shard ``index``."""
        table = read_valid(self.read_dir, index, ["row", "text"])
        texts = table.column("text").to_pylist()
        dim = self._state_encoder.dim
        if texts:
            vectors, n_tokens, truncated = self._state_encoder.encode_with_info(texts)
        else:
            vectors, n_tokens, truncated = np.zeros((0, dim), np.float32), np.zeros(0, np.int32), np.zeros(0, bool)
        out = pa.table({
            "row": table.column("row"),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.astype(np.float32).ravel()), dim),
            "n_tokens": pa.array(n_tokens, pa.int32()),
            "truncated": pa.array(truncated, pa.bool_()),
        })
        return out, {}


def embeddings_files(source: str | Path) -> tuple[pafs.FileSystem, list[str], dict[str, Any]]:
    """The filesystem and sorted Parquet files of an embeddings dataset (a file, a directory of shards, a glob,
    a URI) and their common ``model_id`` / ``dim`` (`CorpusError` naming the file that is not an embeddings
    file or disagrees with the first)."""
    fs, files = open_corpus(source)
    info: dict[str, Any] = {}
    for path in files:
        try:
            with fs.open_input_file(path) as fh:
                schema = pq.read_schema(fh)
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise CorpusError(f"{path}: not a readable Parquet file ({first_line(exc)})") from None
        have = _check_embeddings_schema(Path(path), schema)
        if info and (have["model_id"], have["dim"]) != (info["model_id"], info["dim"]):
            raise CorpusError(f"{path}: vectors of model {have['model_id']} (dim {have['dim']}), but {files[0]} "
                              f"holds model {info['model_id']} (dim {info['dim']})")
        info = info or have
    return fs, files, info


class VectorsTask(ShardTask):
    """The ``embed`` stage from an embeddings dataset: the vector of each valid row of each read shard, by id.

    Each task reads the ``id`` column of every embeddings file, then only the row groups holding its
    shard's ids. The vectors are taken as stored (an embeddings file from ``encode`` holds unit vectors,
    which the cosine tests assume), so both engines and the in-memory ``dedup_embeddings`` see the same bits.

    Args:
        read_dir: The read stage's directory.
        n_shards: Its shard count.
        embeddings: The embeddings dataset (see `embeddings_files`).
    """

    name = "embed"

    def __init__(self, read_dir: str | Path, n_shards: int, embeddings: str | Path) -> None:
        self.read_dir, self._n, self.embeddings = str(read_dir), int(n_shards), str(embeddings)
        self.filesystem, self.files, self.info = embeddings_files(embeddings)

    def n_shards(self) -> int:
        """One per read shard."""
        return self._n

    def settings(self) -> dict[str, Any]:
        """The embeddings files (size and modification time: a changed file is read again) and their model."""
        stamps = [(i.size, i.mtime_ns) for i in self.filesystem.get_file_info(self.files)]
        return {"embeddings": dict(zip(self.files, stamps)), "model_id": self.info["model_id"],
                "dim": self.info["dim"]}

    def run(self, index: int) -> tuple[pa.Table, dict[str, Any]]:
        """Vectors of read shard ``index``; `CorpusError` naming an id the embeddings lack or hold twice."""
        table = read_valid(self.read_dir, index, ["row", "id"])
        ids = table.column("id").combine_chunks()
        dim = int(self.info["dim"])
        n = len(ids)
        vectors = np.zeros((n, dim), np.float32)
        n_tokens = np.zeros(n, np.int32)
        truncated = np.zeros(n, bool)
        found = np.zeros(n, bool)
        for path in self.files:
            pf = pq.ParquetFile(self.filesystem.open_input_file(path))
            file_ids = pf.read(columns=["id"]).column("id").combine_chunks()
            if file_ids.type != ids.type:
                try:
                    file_ids = file_ids.cast(ids.type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    raise CorpusError(f"{path}: ids of type {file_ids.type}, but the corpus ids are {ids.type}") from None
            at = pc.index_in(ids, value_set=file_ids)
            hit = pc.is_valid(at).to_numpy(zero_copy_only=False)
            if not hit.any():
                continue
            if pc.count_distinct(file_ids).as_py() != len(file_ids):
                counts = pc.value_counts(file_ids)
                twice = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))[0].as_py()
                raise CorpusError(f"{path}: id {twice!r} has more than one vector")
            twice = hit & found
            if twice.any():
                raise CorpusError(f"{path}: id {ids[int(np.flatnonzero(twice)[0])].as_py()!r} also has a vector "
                                  "in an earlier embeddings file")
            pos = pc.drop_null(at).to_numpy().astype(np.int64)
            starts = np.cumsum([0] + [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)])
            groups = np.unique(np.searchsorted(starts, pos, side="right") - 1)
            part = pf.read_row_groups(groups.tolist(), columns=["embedding", "n_tokens", "truncated"])
            local = np.concatenate([np.arange(starts[g], starts[g + 1]) for g in groups])
            take = np.searchsorted(local, pos)
            emb = part.column("embedding").combine_chunks()
            if emb.null_count:
                raise CorpusError(f"{path}: column 'embedding' holds nulls")
            vectors[hit] = emb.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)[take]
            n_tokens[hit] = part.column("n_tokens").to_numpy()[take]
            truncated[hit] = part.column("truncated").to_numpy(zero_copy_only=False)[take]
            found |= hit
        if not found.all():
            miss = int(np.flatnonzero(~found)[0])
            raise CorpusError(f"{self.embeddings}: no vector for id {ids[miss].as_py()!r} "
                              f"(corpus row {table.column('row')[miss].as_py()})")
        out = pa.table({
            "row": table.column("row"),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim),
            "n_tokens": pa.array(n_tokens, pa.int32()),
            "truncated": pa.array(truncated, pa.bool_()),
        })
        return out, {}
