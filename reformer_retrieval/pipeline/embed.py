"""Stage ``embed``: read shards -> ``row``, ``embedding`` (float32 x dim, unit length), ``n_tokens``, ``truncated``.

Each shard's valid texts go through `Encoder.encode_with_info` in one call, so a shard's vectors are the
same bits whichever engine (or process, or Ray actor) encodes it. The encoder is loaded once per process
or actor (`EmbedTask.setup`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from reformer_retrieval.pipeline.runner import ShardTask
from reformer_retrieval.pipeline.sketch import read_valid

__all__ = ["EmbedTask"]


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
