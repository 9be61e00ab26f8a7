"""`Encoder`: the inference front door (device, dtype, length-sorted batching, long documents, resume).

Texts are tokenised once, sorted by length and grouped into batches whose padded size stays under a token
budget (``batch_tokens``), so short and long documents never share a batch and padding waste stays small;
vectors come back in input order. A document's vector does not depend on its batch companions (the model is
batch-invariant), so the grouping changes speed only.

Documents longer than ``max_tokens`` are either truncated (``long_docs="truncate"``; flagged in
``truncated``) or read whole as overlapping windows whose embeddings are averaged with weights equal to
their token counts and re-normalised (``long_docs="window"``; a two-channel embedding is averaged and
re-normalised channel by channel, so each channel keeps its share of the cosine).

`Encoder.encode_parquet` streams a corpus (Parquet, JSON Lines or CSV) into an embeddings Parquet file through
numbered part files in ``<dst>.parts/``; a part closes at least every ``part_seconds`` (60 s) of work and is
written atomically, so a run killed at any moment loses at most about that much work, can be continued with
``resume=True`` (which encodes only what the finished parts do not hold) and ends with exactly the same output as
an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from reformer_retrieval.atomic import atomic_write_text
from reformer_retrieval.checkpoint import load_model, load_tokenizer
from reformer_retrieval.corpus import (
    CHANNELS,
    Channels,
    CorpusError,
    EmbeddingWriter,
    IdKind,
    SkippedRecord,
    SkipReport,
    corpus_id_kind,
    footer_row_count,
    iter_batches,
    read_skipped,
    resolve_sources,
    split_model_id,
    write_skipped,
)
from reformer_retrieval.model.lexical import LexicalSketch
from reformer_retrieval.tokenizer import ByteTokenizer

__all__ = [
    "CHANNELS",
    "DEFAULT_MODEL_DIR",
    "Channels",
    "EncodeSummary",
    "Encoder",
    "default_skipped_path",
    "model_identity",
    "parts_dir_for",
    "plan_batches",
    "resolve_device",
    "resolve_dtype",
    "split_model_id",
]

logger = logging.getLogger(__name__)

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "assets" / "default"
"""The bundled default model (see its ``training.json`` for what it is)."""

DEFAULT_BATCH_TOKENS = {"cpu": 65_536, "cuda": 262_144}
"""Padded tokens per forward pass when ``batch_tokens`` is not given, per device type."""

PROGRESS_FILE = "progress.json"
PARTS_FORMAT = 2
"""Version of the ``<dst>.parts`` layout (2: parts end anywhere; each records its rows)."""
CHUNK_BATCHES = 8
"""Documents are encoded in chunks of about this many forward passes (``batch_tokens`` each), sorted by length
within a chunk."""
MERGE_ROW_GROUP = 65_536
"""Rows per row group of a merged embeddings file."""

_clock = time.monotonic  # the clock parts are closed by (a test may replace it)

AUTO_PROGRESS_DOCS = 2_000
"""`Encoder.encode` with ``show_progress=None`` shows a bar from this many texts on ..."""
AUTO_PROGRESS_TOKENS = 500_000
"""... or this many tokens (about 15 s on two CPU cores)."""
LongDocs = Literal["truncate", "window"]

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


# --------------------------------------------------------------------------------------------- helpers
def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else as ``torch.device`` (CUDA checked)."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device={device!r}: not a device name (use auto, cpu, cuda or cuda:N)") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r}: CUDA is not available on this machine (use --device cpu)")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``None`` -> float32 on CPU, bfloat16 on GPU; names such as ``"bf16"`` or ``"float32"`` accepted."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        resolved = dtype
    elif isinstance(dtype, str) and dtype.lower().removeprefix("torch.") in _DTYPES:
        resolved = _DTYPES[dtype.lower().removeprefix("torch.")]
    else:
        raise ValueError(f"dtype={dtype!r}: use float32, bfloat16 or float16")
    if resolved not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"dtype={dtype!r}: use float32, bfloat16 or float16")
    return resolved


def plan_batches(lengths: Sequence[int], batch_tokens: int, pad_multiple: int = 1) -> list[list[int]]:
    """Group items into length-sorted batches whose padded size stays within ``batch_tokens``.

    Items are taken longest first; a batch is as wide as its first (longest) item rounded up to
    ``pad_multiple``, and holds as many items as fit ``rows * width <= batch_tokens`` (at least one,
    so an item longer than the budget gets a batch of its own). Ties keep input order, so the plan is
    a deterministic function of the lengths.

    Returns:
        Lists of item indices, one list per batch.
    """
    if batch_tokens <= 0:
        raise ValueError(f"batch_tokens={batch_tokens}: must be positive")
    order = sorted(range(len(lengths)), key=lambda i: (-int(lengths[i]), i))
    batches: list[list[int]] = []
    current: list[int] = []
    width = 0
    for i in order:
        if current and (len(current) + 1) * width > batch_tokens:
            batches.append(current)
            current = []
        if not current:
            n = max(int(lengths[i]), 1)
            width = -(-n // pad_multiple) * pad_multiple
        current.append(i)
    if current:
        batches.append(current)
    return batches


def parts_dir_for(dst: str | os.PathLike[str]) -> Path:
    """Where `Encoder.encode_parquet` keeps the parts of an unfinished output: ``<dst>.parts``."""
    return Path(f"{os.fspath(dst)}.parts")


def default_skipped_path(dst: str | os.PathLike[str]) -> Path:
    """The skipped-rows report written beside an output: ``emb.parquet`` -> ``emb.skipped.parquet``."""
    dst = Path(dst)
    stem = dst.name[: -len(".parquet")] if dst.name.endswith(".parquet") else dst.name
    return dst.with_name(f"{stem}.skipped.parquet")


@dataclass
class _Prepared:
    """Texts turned into model inputs: zero or more segments (token id arrays) per document."""

    segments: list[np.ndarray] = field(default_factory=list)
    seg_doc: list[int] = field(default_factory=list)
    n_tokens: list[int] = field(default_factory=list)
    truncated: list[bool] = field(default_factory=list)
    whole: list[np.ndarray | None] = field(default_factory=list)
    """Every token of each document, for the lexical channel (``None`` when the lexical channel is off)."""
    tokens: int = 0
    """Tokens of the work: the segments' (the Reformer's input), or, with no Reformer pass, the whole documents'
    (so chunks, progress and rates count the lexical channel's work too)."""

    def add(
        self, segments: Iterable[np.ndarray], n_tokens: int, truncated: bool, whole: np.ndarray | None = None
    ) -> None:
        """Append one document."""
        doc = len(self.n_tokens)
        self.whole.append(whole)
        segments = list(segments)
        for seg in segments:
            self.segments.append(seg)
            self.seg_doc.append(doc)
            self.tokens += len(seg)
        if not segments and whole is not None:
            self.tokens += len(whole)
        self.n_tokens.append(n_tokens)
        self.truncated.append(truncated)

    @property
    def n_docs(self) -> int:
        return len(self.n_tokens)


class _Progress:
    """A tqdm bar over documents with a tokens/s read-out (tokens actually encoded in this run)."""

    def __init__(self, total: int | None, enabled: bool, desc: str, initial: int = 0) -> None:
        self.bar = tqdm(
            total=total, initial=initial, unit="doc", desc=desc, disable=not enabled, dynamic_ncols=True, mininterval=0.5
        )
        self.tokens = 0
        self.start = time.perf_counter()

    def update(self, docs: int = 0, tokens: int = 0) -> None:
        self.tokens += tokens
        if docs:
            elapsed = max(time.perf_counter() - self.start, 1e-9)
            self.bar.set_postfix_str(f"{self.tokens / elapsed:,.0f} tok/s", refresh=False)
            self.bar.update(docs)

    def close(self) -> None:
        self.bar.close()


@dataclass
class EncodeSummary:
    """What `Encoder.encode_parquet` did.

    Attributes:
        output: The embeddings file.
        skipped_path: The skipped-rows report (``id``, ``reason``, ``file``, ``row``).
        documents: Documents encoded (rows of ``output``).
        skipped: Rows skipped (nulls, empties, non-text, duplicates kept out).
        truncated: Documents cut at ``max_tokens``.
        tokens: Tokens read over all documents.
        seconds: Wall time of this call.
        skip_reasons: Skipped rows per reason.
        parts_resumed: Parts found finished from an earlier, interrupted run.
        documents_resumed: Documents of those parts (read past, not encoded again).
        tokens_encoded: Tokens encoded by this call (``tokens`` less those of the reused parts).
        model_id: Fingerprint of the model.
        max_tokens: Token limit per document (or per window).
        long_docs: ``"truncate"`` or ``"window"``.
    """

    output: Path
    skipped_path: Path
    documents: int
    skipped: int
    truncated: int
    tokens: int
    seconds: float
    skip_reasons: dict[str, int] = field(default_factory=dict)
    parts_resumed: int = 0
    documents_resumed: int = 0
    tokens_encoded: int | None = None
    model_id: str = ""
    max_tokens: int = 0
    long_docs: str = "truncate"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        d = asdict(self)
        d["output"], d["skipped_path"] = str(self.output), str(self.skipped_path)
        return d

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def lines(self) -> list[str]:
        """The summary shown on screen: what was written, what was skipped, what was truncated."""
        encoded = self.tokens if self.tokens_encoded is None else self.tokens_encoded
        rate = encoded / self.seconds if self.seconds > 0 else 0.0
        out = [
            f"encoded {self.documents:,} documents ({self.tokens:,} tokens) in {self.seconds:,.1f} s "
            f"({rate:,.0f} tokens/s) -> {self.output} [model {self.model_id}]"
        ]
        if self.parts_resumed:
            out.append(
                f"resumed: reused {self.parts_resumed} part(s) of an earlier run ({self.documents_resumed:,} "
                f"documents); encoded the other {self.documents - self.documents_resumed:,} now"
            )
        report = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skip_reasons.items()))
        out.append(
            f"skipped {self.skipped:,} rows" + (f" ({report})" if report else "") + f"; listed in {self.skipped_path}"
        )
        if self.long_docs == "window":
            out.append(f"truncated 0 documents (long documents read whole as windows of {self.max_tokens:,} tokens)")
        else:
            out.append(
                f"truncated {self.truncated:,} documents longer than max_tokens={self.max_tokens:,} "
                "(flagged in the 'truncated' column; long_docs='window' reads them whole)"
            )
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())


def _channels_dim(config: Any, channels: str) -> int:
    """Width of the vectors of ``channels`` of a model with ``config`` (a `ReformerConfig`)."""
    if channels == "both" or not config.ngram_size:
        return int(config.embedding_dim)
    return int(config.context_dim if channels == "contextual" else config.ngram_dim)


def model_identity(path: str | os.PathLike[str] | None = None, channels: Channels = "both") -> tuple[int, str]:
    """``(dim, model_id)`` of ``Encoder.load(path, channels=channels)``, without building the network.

    The dimension comes from the directory's ``config.json``, the fingerprint from its weights file's
    metadata (`reformer_retrieval.dedup.model_id_of`; the weights are fingerprinted only when the metadata
    lacks it), so a driver that only writes the vectors others compute never loads the model.

    Raises:
        ModelDirectoryError: if the directory lacks ``config.json`` or ``model.safetensors``.
        ValueError: for unknown ``channels``, or ``"lexical"`` on a model without that channel.
    """
    from reformer_retrieval.checkpoint import CONFIG_FILE, ModelDirectoryError
    from reformer_retrieval.config import ReformerConfig
    from reformer_retrieval.dedup import model_id_of

    if channels not in CHANNELS:
        raise ValueError(f"channels={channels!r}: must be one of {', '.join(CHANNELS)}")
    directory = DEFAULT_MODEL_DIR if path is None else Path(path)
    if not (directory / CONFIG_FILE).is_file():
        raise ModelDirectoryError(f"model directory {directory} has no {CONFIG_FILE}")
    config = ReformerConfig.from_json(directory / CONFIG_FILE)
    if channels == "lexical" and not config.ngram_size:
        raise ValueError("channels='lexical': this model has no lexical (hashed n-gram) channel")
    base = model_id_of(directory)
    return _channels_dim(config, channels), base if channels == "both" else f"{base}:{channels}"


# --------------------------------------------------------------------------------------------- encoder
class Encoder:
    """Encodes texts and Parquet corpora into unit vectors with a `ReformerEncoder`.

    Example:
        >>> enc = Encoder.load()                          # the bundled default model  # doctest: +SKIP
        >>> vectors = enc.encode(["text one", "text two"])  # float32 (2, enc.dim)     # doctest: +SKIP
        >>> enc.encode_parquet("corpus.parquet", "embeddings.parquet")                # doctest: +SKIP

    Attributes:
        model: The `ReformerEncoder` (eval mode, on ``device``, in ``dtype``).
        tokenizer: Its `ByteTokenizer`.
        device: Where the model runs.
        dtype: Compute dtype (float32 on CPU and bfloat16 on GPU by default).
        batch_tokens: Padded tokens per forward pass.
        max_tokens: Tokens read per document (``truncate``) or per window (``window``); at most the
            model's ``max_len``.
        long_docs: ``"truncate"`` or ``"window"``.
        window_overlap: Tokens shared by consecutive windows (``window`` mode).
        channels: Which channels of the model the vectors hold: ``"both"`` (the model's embedding),
            ``"contextual"`` (the Reformer channel alone) or ``"lexical"`` (the hashed n-gram channel alone,
            computed in numpy over the whole document, with no Reformer forward pass). Each alone is a unit vector.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: ByteTokenizer | None = None,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype | None = None,
        batch_tokens: int | None = None,
        max_tokens: int = 65_536,
        long_docs: LongDocs = "truncate",
        window_overlap: int | None = None,
        channels: Channels = "both",
    ) -> None:
        if channels not in CHANNELS:
            raise ValueError(f"channels={channels!r}: must be one of {', '.join(CHANNELS)}")
        if channels == "lexical" and getattr(model, "ngrams", None) is None:
            raise ValueError("channels='lexical': this model has no lexical (hashed n-gram) channel")
        if long_docs not in ("truncate", "window"):
            raise ValueError(f"long_docs={long_docs!r}: must be 'truncate' or 'window'")
        if not isinstance(max_tokens, (int, np.integer)) or max_tokens <= 0:
            raise ValueError(f"max_tokens={max_tokens!r}: must be a positive integer")
        if batch_tokens is not None and (not isinstance(batch_tokens, (int, np.integer)) or batch_tokens <= 0):
            raise ValueError(f"batch_tokens={batch_tokens!r}: must be a positive integer")
        self._model_id: str = model.model_id  # fingerprint of the weights as saved, before any dtype cast
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        if getattr(self.model, "ngrams", None) is not None:
            self.model.ngrams.float()  # n-gram weights and vectors stay float32 (bf16 would round weights ~0.4%)
        self.tokenizer = tokenizer if tokenizer is not None else ByteTokenizer(max_len=model.config.max_len)
        if self.tokenizer.vocab_size != model.config.vocab_size:
            raise ValueError(
                f"the tokenizer has {self.tokenizer.vocab_size} ids but the model {model.config.vocab_size}: pass the "
                "model's own tokenizer (Encoder.load(directory) reads it from the model directory)"
            )
        self.max_tokens = int(min(max_tokens, model.config.max_len))
        self.long_docs: LongDocs = long_docs
        overlap = self.max_tokens // 8 if window_overlap is None else int(window_overlap)
        if not 0 <= overlap < self.max_tokens:
            raise ValueError(f"window_overlap={window_overlap!r}: must be in [0, max_tokens={self.max_tokens})")
        self.window_overlap = overlap
        self.batch_tokens = int(batch_tokens or DEFAULT_BATCH_TOKENS.get(self.device.type, 65_536))
        self.pad_multiple = int(getattr(model, "pad_multiple", 1))
        self.channels: Channels = channels
        ngrams = getattr(self.model, "ngrams", None)
        self._lexical = LexicalSketch.from_module(ngrams) if ngrams is not None and channels != "contextual" else None

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str] | None = None,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype | None = None,
        batch_tokens: int | None = None,
        max_tokens: int = 65_536,
        long_docs: LongDocs = "truncate",
        window_overlap: int | None = None,
        channels: Channels = "both",
    ) -> Encoder:
        """Load a saved model directory (``None``: the bundled default model).

        Args:
            path: A directory written by ``ReformerEncoder.save_pretrained``; ``None`` for the default.
            device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...
            dtype: ``None`` (float32 on CPU, bfloat16 on GPU), or ``"float32"``, ``"bfloat16"``, ``"float16"``.
            batch_tokens: Padded tokens per forward pass (default 65,536 on CPU, 262,144 on GPU).
            max_tokens: Longest document (or window) in tokens, capped at the model's ``max_len``.
            long_docs: ``"truncate"`` longer documents (flagged), or read them whole as ``"window"`` s.
            window_overlap: Overlap of consecutive windows in tokens (default ``max_tokens // 8``).
            channels: ``"both"``, ``"contextual"`` or ``"lexical"`` (see the class).

        Raises:
            ModelDirectoryError: if the directory lacks ``config.json`` or ``model.safetensors``.
        """
        directory = DEFAULT_MODEL_DIR if path is None else Path(path)
        model = load_model(directory, map_location="cpu")
        tokenizer = load_tokenizer(directory)
        return cls(
            model,
            tokenizer,
            device=device,
            dtype=dtype,
            batch_tokens=batch_tokens,
            max_tokens=max_tokens,
            long_docs=long_docs,
            window_overlap=window_overlap,
            channels=channels,
        )

    # ------------------------------------------------------------------ properties
    @property
    def model_id(self) -> str:
        """Fingerprint of what made the vectors, written into every embeddings file: the model's 12 hex
        characters, followed by ``:contextual`` or ``:lexical`` when the vectors hold one channel alone (vectors of
        different channels are never compared: indexes refuse a different ``model_id``)."""
        return self._model_id if self.channels == "both" else f"{self._model_id}:{self.channels}"

    @property
    def base_model_id(self) -> str:
        """The model's own fingerprint (12 hex characters), whatever the channels."""
        return self._model_id

    @property
    def dim(self) -> int:
        """Width of the embeddings."""
        return _channels_dim(self.model.config, self.channels)

    @property
    def _contextual_on(self) -> bool:
        return self.channels != "lexical"

    def __repr__(self) -> str:
        return (
            f"Encoder(model_id={self.model_id!r}, dim={self.dim}, device={str(self.device)!r}, "
            f"dtype={str(self.dtype).removeprefix('torch.')}, max_tokens={self.max_tokens}, "
            f"long_docs={self.long_docs!r}, batch_tokens={self.batch_tokens}, channels={self.channels!r})"
        )

    # ------------------------------------------------------------------ texts
    def encode(self, texts: Sequence[str], show_progress: bool | None = None) -> np.ndarray:
        """Unit vectors of ``texts``: float32 array (n, dim), in input order.

        An empty text gets the zero vector. Truncation is reported as a logged warning; use
        `encode_with_info` to get ``n_tokens`` and ``truncated`` per text.

        Args:
            texts: The documents.
            show_progress: Show a tqdm bar; ``None`` shows one when the work is long (at least
                `AUTO_PROGRESS_DOCS` texts or `AUTO_PROGRESS_TOKENS` tokens), not for short calls.
        """
        vectors, _, truncated = self.encode_with_info(texts, show_progress=show_progress)
        if truncated.any():
            logger.warning(
                "%d of %d texts were longer than max_tokens=%d and were truncated "
                "(encode_with_info reports which; long_docs='window' reads them whole)",
                int(truncated.sum()),
                len(truncated),
                self.max_tokens,
            )
        return vectors

    def encode_with_info(
        self, texts: Sequence[str], show_progress: bool | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Vectors plus what was read (``show_progress`` as in `encode`).

        Returns:
            ``(vectors, n_tokens, truncated)``: float32 (n, dim); int32 (n,) tokens read per text (all of
            them in ``window`` mode); bool (n,) True where a text was cut at ``max_tokens``.
        """
        texts = _as_text_list(texts)
        prepared = self._prepare(texts)
        if show_progress is None:
            show_progress = len(texts) >= AUTO_PROGRESS_DOCS or prepared.tokens >= AUTO_PROGRESS_TOKENS
        progress = _Progress(len(texts), show_progress, desc="encode")
        try:
            vectors = self._run(prepared, progress)
        finally:
            progress.close()
        return vectors, np.asarray(prepared.n_tokens, dtype=np.int32), np.asarray(prepared.truncated, dtype=bool)

    def _tokenize(self, text: str) -> tuple[list[np.ndarray], int, bool, np.ndarray | None]:
        """Segments of one text for the contextual channel (none if empty), tokens read, whether it was
        truncated, and every token of it for the lexical channel (``None`` when that channel is off).

        Token ids are stored as int16 (the byte vocabulary fits), a quarter of the memory of int64. The lexical
        channel always reads the whole document; ``truncated`` is about the contextual channel.
        """
        compact = np.int16 if self.tokenizer.vocab_size <= np.iinfo(np.int16).max else np.int64
        lexical = self._lexical is not None
        if self.long_docs == "truncate" and not lexical:
            ids, total = self.tokenizer.encode(text, self.max_tokens)
            return ([ids.astype(compact)] if len(ids) else []), len(ids), total > self.max_tokens, None
        ids, total = self.tokenizer.encode(text, sys.maxsize)
        ids = ids.astype(compact)
        whole = ids if lexical else None
        if not self._contextual_on:
            return [], total, False, whole
        if self.long_docs == "truncate":
            head = ids[: self.max_tokens]
            return ([head] if len(head) else []), len(head), total > self.max_tokens, whole
        return list(_windows(ids, self.max_tokens, self.window_overlap)), total, False, whole

    def _prepare(self, texts: Sequence[str]) -> _Prepared:
        prepared = _Prepared()
        for text in texts:
            prepared.add(*self._tokenize(text))
        return prepared

    def _run(self, prepared: _Prepared, progress: _Progress) -> np.ndarray:
        """The vectors of prepared documents: the contextual channel from the model, the lexical channel from
        `LexicalSketch` over each whole document, joined with each channel's share of the cosine."""
        n = prepared.n_docs
        contextual = self._run_contextual(prepared, progress) if self._contextual_on else None
        lexical = None
        if self._lexical is not None:
            lexical = np.zeros((n, self._lexical.dim), dtype=np.float32)
            for doc, ids in enumerate(prepared.whole):
                if ids is not None and len(ids):
                    lexical[doc] = self._lexical.vector(ids)
            if contextual is None:
                progress.update(docs=n, tokens=prepared.tokens)
        if lexical is None:
            return contextual  # type: ignore[return-value]
        if contextual is None:
            return lexical
        share = float(self.model.config.ngram_weight)
        return np.concatenate(
            [contextual * np.float32(np.sqrt(1.0 - share)), lexical * np.float32(np.sqrt(share))], axis=1
        )

    def _run_contextual(self, prepared: _Prepared, progress: _Progress) -> np.ndarray:
        """Contextual-channel unit vectors (n, context width); windows of a document are pooled by a
        token-weighted mean, re-normalised."""
        n = prepared.n_docs
        config = self.model.config
        width = int(config.context_dim if config.ngram_size else config.embedding_dim)
        out = np.zeros((n, width), dtype=np.float32)
        seg_doc = np.asarray(prepared.seg_doc, dtype=np.int64)
        lengths = np.fromiter((len(s) for s in prepared.segments), dtype=np.int64, count=len(prepared.segments))
        seg_vectors = np.zeros((len(prepared.segments), width), dtype=np.float32)
        remaining = np.bincount(seg_doc, minlength=n)
        progress.update(docs=int((remaining == 0).sum()))  # empty texts: nothing to run
        # Batches are queued without waiting for results (on a GPU the host prepares the next batch while the
        # device computes); the vectors are copied back once per call, then placed in input order.
        pending: list[tuple[list[int], torch.Tensor]] = []
        for batch in plan_batches(lengths, self.batch_tokens, self.pad_multiple):
            pending.append((batch, self._launch([prepared.segments[i] for i in batch])))
            docs = seg_doc[batch]
            np.subtract.at(remaining, docs, 1)
            progress.update(docs=int((remaining[np.unique(docs)] == 0).sum()), tokens=int(lengths[batch].sum()))
        for batch, emb in pending:
            seg_vectors[batch] = emb.cpu().numpy()
        if not len(prepared.segments):
            return out
        counts = np.bincount(seg_doc, minlength=n)
        single = counts[seg_doc] == 1
        out[seg_doc[single]] = seg_vectors[single]  # one segment: its vector as is
        multi = ~single
        if multi.any():  # windows: token-weighted mean, re-normalised
            pooled = np.zeros((n, width), dtype=np.float64)
            np.add.at(pooled, seg_doc[multi], seg_vectors[multi].astype(np.float64) * lengths[multi, None])
            docs = np.unique(seg_doc[multi])
            part = pooled[docs]
            norms = np.linalg.norm(part, axis=1, keepdims=True)
            out[docs] = (part / np.maximum(norms, 1e-12)).astype(np.float32)
        return out

    def _launch(self, segments: list[np.ndarray]) -> torch.Tensor:
        """Queue one forward pass over token arrays; float32 (n, dim) on the device, split on out-of-memory."""
        width = max(len(s) for s in segments)
        ids = np.zeros((len(segments), width), dtype=np.int64)
        mask = np.zeros((len(segments), width), dtype=bool)
        for row, seg in enumerate(segments):
            ids[row, : len(seg)] = seg
            mask[row, : len(seg)] = True
        if self.tokenizer.pad_token_id != 0:
            ids[~mask] = self.tokenizer.pad_token_id
        try:
            with torch.inference_mode():
                emb = self.model.contextual(
                    torch.from_numpy(ids).to(self.device, non_blocking=True),
                    torch.from_numpy(mask).to(self.device, non_blocking=True),
                )
                return emb.float()
        except torch.cuda.OutOfMemoryError:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            if len(segments) == 1:
                raise RuntimeError(
                    f"out of memory encoding one document of {width:,} tokens on {self.device}; "
                    "lower max_tokens or use long_docs='window'"
                ) from None
            half = len(segments) // 2
            logger.warning("out of memory on a batch of %d x %d tokens; splitting it", len(segments), width)
            return torch.cat([self._launch(segments[:half]), self._launch(segments[half:])])

    # ------------------------------------------------------------------ corpus files
    def encode_parquet(
        self,
        src: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        dst: str | os.PathLike[str],
        id_column: str = "id",
        text_column: str = "text",
        resume: bool = False,
        on_duplicate: Literal["error", "keep_first"] = "error",
        skipped_path: str | os.PathLike[str] | None = None,
        show_progress: bool = True,
        part_docs: int = 4096,
        part_tokens: int = 1 << 20,
        read_batch_size: int = 256,
        part_seconds: float = 60.0,
    ) -> EncodeSummary:
        """Encode a corpus (Parquet, JSON Lines or CSV) into an embeddings Parquet file (ARCHITECTURE.md format).

        The corpus is streamed (`reformer_retrieval.corpus.iter_batches`) and encoded a chunk at a time (at
        most ``part_docs`` documents or ``min(part_tokens, 8 * batch_tokens)`` tokens; where chunks end depends
        only on the data); the vectors go to numbered parts ``<dst>.parts/part-NNNNN.parquet``, each written
        atomically. A part closes at the end of the first chunk that brings it to ``part_docs`` documents,
        ``part_tokens`` tokens or ``part_seconds`` seconds of work, so a run killed at any moment loses at most
        about ``part_seconds`` of encoding (plus one chunk, a few seconds). At the end the parts are merged
        into ``dst`` (atomically, in row groups that do not depend on where the parts ended), the skipped rows
        are written to ``skipped_path`` (default ``<dst stem>.skipped.parquet``) and the parts folder is
        removed. If a run is interrupted, call again with ``resume=True`` (same corpus and settings): the
        finished parts are reused (their rows are read past, not encoded again), only the rest is encoded, and
        the output is the same as that of an uninterrupted run.

        Args:
            src: Corpus file (Parquet, JSON Lines, CSV; plain or compressed), directory of shards, glob,
                ``file://`` URI, or list of these.
            dst: Output embeddings file (Parquet).
            id_column: Id column of the corpus (dotted names reach nested fields).
            text_column: Text column of the corpus (dotted names reach nested fields).
            resume: Continue an interrupted run from ``<dst>.parts``.
            on_duplicate: ``"error"`` or ``"keep_first"`` (others reported as skipped).
            skipped_path: Where the skipped-rows report goes.
            show_progress: Show a tqdm bar (documents, tokens/s) and, when resuming, what is reused.
            part_docs: Documents per chunk at most; a part closes once it holds this many.
            part_tokens: A part also closes once it holds this many tokens, which bounds the memory a part
                takes whatever the corpus size (a chunk holds at most this many too).
            read_batch_size: Rows read from the corpus at a time.
            part_seconds: A part also closes at the first chunk end after this many seconds of work (0: a
                part per chunk). It does not change the output, and may differ when resuming.

        Returns:
            An `EncodeSummary`; ``str(summary)`` is the text to show.

        Raises:
            CorpusError: bad corpus (missing column, wrong type, duplicate id, unreadable file), or
                ``<dst>.parts`` holds an interrupted run and ``resume`` is False, or it was made with other
                settings.
        """
        start = time.perf_counter()
        files = resolve_sources(src)
        dst = Path(dst)
        if dst.is_dir():
            raise CorpusError(f"output {dst} is a directory; give a file name such as {dst / 'embeddings.parquet'}")
        if part_docs <= 0 or part_tokens <= 0:
            raise ValueError("part_docs and part_tokens must be positive")
        if not part_seconds >= 0:
            raise ValueError(f"part_seconds={part_seconds!r}: must be >= 0")
        skipped_path = Path(skipped_path) if skipped_path is not None else default_skipped_path(dst)
        id_kind = corpus_id_kind(files, id_column, text_column)
        parts_dir = parts_dir_for(dst)
        settings = self._settings(files, id_column, text_column, on_duplicate, part_docs, part_tokens, read_batch_size)
        self._open_parts(parts_dir, settings, resume)
        done = _finished_parts(parts_dir)
        reused_docs = sum(d for d, _ in done)
        to_skip = reused_rows = sum(d + s for d, s in done)
        total_rows = footer_row_count(files)
        progress = _Progress(total_rows, show_progress, desc=f"encode {dst.name}", initial=reused_rows)
        if done:
            left = f"{total_rows - reused_rows:,} rows left" if total_rows is not None else "the rest of the corpus left"
            message = (
                f"resuming {dst}: reusing {len(done)} finished part(s) ({reused_docs:,} documents, "
                f"{reused_rows:,} rows) from {parts_dir}; {left}"
            )
            logger.info("%s", message)
            if show_progress:
                progress.bar.write(message, file=sys.stderr)
        writer = _PartWriter(self, parts_dir, len(done), id_kind, progress, part_docs, part_tokens, part_seconds)
        try:
            for batch in iter_batches(files, id_column, text_column, read_batch_size, on_duplicate):
                skipped, ids, texts = batch.skipped, batch.ids, batch.texts
                if to_skip:  # rows an earlier run put in its finished parts: skipped rows first, then documents
                    k = min(to_skip, len(skipped))
                    skipped, to_skip = skipped[k:], to_skip - k
                    k = min(to_skip, len(ids))
                    ids, texts, to_skip = ids[k:], texts[k:], to_skip - k
                writer.add_skipped(skipped)
                for doc_id, text in zip(ids, texts):
                    writer.add(doc_id, *self._tokenize(text))
            if to_skip:
                raise CorpusError(
                    f"cannot resume from {parts_dir}: its parts hold {reused_rows:,} rows but the corpus has "
                    f"{reused_rows - to_skip:,}; delete that folder to start over"
                )
            writer.finish()
        except CorpusError:
            # A problem in the data recurs on every rerun with these settings: the parts are of no use.
            shutil.rmtree(parts_dir, ignore_errors=True)
            raise
        finally:
            progress.close()
        summary = self._merge(parts_dir, writer.n_parts, dst, skipped_path, id_kind, start)
        summary.parts_resumed = len(done)
        summary.documents_resumed = reused_docs
        summary.tokens_encoded = writer.tokens
        logger.info("%s", summary)
        return summary

    def _settings(
        self,
        files: list[Path],
        id_column: str,
        text_column: str,
        on_duplicate: str,
        part_docs: int,
        part_tokens: int,
        read_batch_size: int,
    ) -> dict[str, Any]:
        """Everything that decides the bytes of the output (the chunks) or the order of the rows; a resumed run
        must match it exactly (``part_seconds`` may differ: a part records the rows it holds)."""
        return {
            "model_id": self.model_id,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device_type": self.device.type,
            "max_tokens": self.max_tokens,
            "long_docs": self.long_docs,
            "window_overlap": self.window_overlap,
            "batch_tokens": self.batch_tokens,
            "tokenizer": self.tokenizer.to_dict(),
            "id_column": id_column,
            "text_column": text_column,
            "on_duplicate": on_duplicate,
            "part_docs": part_docs,
            "part_tokens": part_tokens,
            "read_batch_size": read_batch_size,
            "sources": [
                {"path": str(p.resolve()), "size": p.stat().st_size, "mtime_ns": p.stat().st_mtime_ns} for p in files
            ],
        }

    @staticmethod
    def _open_parts(parts_dir: Path, settings: dict[str, Any], resume: bool) -> None:
        progress_file = parts_dir / PROGRESS_FILE
        if parts_dir.exists() and progress_file.is_file():
            if not resume:
                raise CorpusError(
                    f"{parts_dir} holds an interrupted run: pass resume=True (--resume) to continue it, "
                    "or delete that folder to start over"
                )
            try:
                saved = json.loads(progress_file.read_text(encoding="utf-8"))
                previous, version = saved["settings"], saved.get("format")
            except (ValueError, KeyError) as exc:
                raise CorpusError(f"{progress_file}: unreadable ({exc}); delete {parts_dir} to start over") from None
            if version != PARTS_FORMAT:
                raise CorpusError(
                    f"cannot resume from {parts_dir}: its parts are in format {version!r} of an older version "
                    f"(this one writes {PARTS_FORMAT}); delete that folder to start over"
                )
            changed = sorted(k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k))
            if changed:
                first = changed[0]
                raise CorpusError(
                    f"cannot resume from {parts_dir}: it was made with other settings ({', '.join(changed)}; "
                    f"e.g. {first}: {previous.get(first)!r} then, {settings.get(first)!r} now); "
                    "delete that folder to start over"
                )
            return
        if parts_dir.exists():  # no progress file: nothing was committed yet
            shutil.rmtree(parts_dir)
        parts_dir.mkdir(parents=True)
        atomic_write_text(
            progress_file, json.dumps({"format": PARTS_FORMAT, "settings": settings}, indent=2, sort_keys=True)
        )

    def _merge(
        self, parts_dir: Path, n_parts: int, dst: Path, skipped_path: Path, id_kind: IdKind, start: float
    ) -> EncodeSummary:
        documents = tokens = truncated = 0
        report = SkipReport()
        for i in range(n_parts):
            report.add(read_skipped(_part_paths(parts_dir, i)[1]))
        write_skipped(skipped_path, report.records, id_kind)
        with EmbeddingWriter(dst, self.dim, self.model_id, id_kind) as writer:
            # Whole row groups of MERGE_ROW_GROUP rows, wherever the parts ended: the bytes of the output do
            # not depend on how an earlier run was cut into parts.
            pending: list[pa.Table] = []
            held = 0
            for i in range(n_parts):
                table = pq.read_table(_part_paths(parts_dir, i)[0])
                documents += table.num_rows
                tokens += int(np.asarray(table.column("n_tokens").to_numpy(), dtype=np.int64).sum())
                truncated += int(np.asarray(table.column("truncated").to_numpy(zero_copy_only=False)).sum())
                pending.append(table)
                held += table.num_rows
                while held >= MERGE_ROW_GROUP:
                    joined = pa.concat_tables(pending)
                    writer.write_table(joined.slice(0, MERGE_ROW_GROUP).combine_chunks())
                    pending, held = [joined.slice(MERGE_ROW_GROUP)], held - MERGE_ROW_GROUP
            if held:
                writer.write_table(pa.concat_tables(pending).combine_chunks())
        shutil.rmtree(parts_dir, ignore_errors=True)
        return EncodeSummary(
            output=dst,
            skipped_path=skipped_path,
            documents=documents,
            skipped=len(report),
            truncated=truncated,
            tokens=tokens,
            seconds=time.perf_counter() - start,
            skip_reasons=report.counts(),
            model_id=self.model_id,
            max_tokens=self.max_tokens,
            long_docs=self.long_docs,
        )


def _part_paths(parts_dir: Path, index: int) -> tuple[Path, Path]:
    """(vectors, skipped rows) of part ``index``; the vectors file is the part's commit point."""
    return parts_dir / f"part-{index:05d}.parquet", parts_dir / f"part-{index:05d}.skipped.parquet"


def _finished_parts(parts_dir: Path) -> list[tuple[int, int]]:
    """(documents, skipped rows) of each finished part of an earlier run, in order.

    A part is finished when its vectors file exists (written after its skipped-rows file); the first part
    that is not ends the list, and its leftovers are removed.
    """
    done: list[tuple[int, int]] = []
    if not parts_dir.is_dir():
        return done
    while True:
        emb_path, skip_path = _part_paths(parts_dir, len(done))
        if not (emb_path.is_file() and skip_path.is_file()):
            break
        try:
            done.append((pq.ParquetFile(emb_path).metadata.num_rows, pq.ParquetFile(skip_path).metadata.num_rows))
        except (pa.ArrowException, OSError) as exc:
            raise CorpusError(f"{emb_path}: unreadable part ({exc}); delete {parts_dir} to start over") from None
    for leftover in (*_part_paths(parts_dir, len(done)),):
        leftover.unlink(missing_ok=True)
    return done


class _PartWriter:
    """Collects documents into chunks (encoded as they fill) and chunks into parts (written as they close).

    Where a chunk ends depends only on the data (``part_docs`` documents or ``chunk_tokens`` tokens from the
    previous chunk's end), and a part always ends where a chunk does; so a run resumed after any part encodes
    exactly the chunks an uninterrupted run would have, and its vectors are the same to the bit, whenever the
    parts were closed by the clock.
    """

    def __init__(
        self,
        encoder: Encoder,
        parts_dir: Path,
        first_part: int,
        id_kind: IdKind,
        progress: _Progress,
        part_docs: int,
        part_tokens: int,
        part_seconds: float,
    ) -> None:
        self.encoder = encoder
        self.parts_dir = parts_dir
        self.n_parts = first_part
        self.first_part = first_part
        self.id_kind = id_kind
        self.progress = progress
        self.part_docs = part_docs
        self.part_tokens = part_tokens
        self.part_seconds = part_seconds
        self.chunk_tokens = min(part_tokens, CHUNK_BATCHES * encoder.batch_tokens)
        self.tokens = 0  # tokens encoded by this run
        self._reset()

    def _reset(self) -> None:
        self.ids: list[Any] = []
        self.vectors: list[np.ndarray] = []
        self.n_tokens: list[int] = []
        self.truncated: list[bool] = []
        self.skipped: list[SkippedRecord] = []
        self.part_token_count = 0
        self.chunk = _Prepared()
        self.chunk_ids: list[Any] = []
        self.started = _clock()

    def add_skipped(self, records: Sequence[SkippedRecord]) -> None:
        """Rows of the corpus that are not encoded (they go to the current part's skipped-rows file)."""
        self.skipped.extend(records)
        self.progress.update(docs=len(records))

    def add(
        self, doc_id: Any, segments: list[np.ndarray], n_tokens: int, truncated: bool, whole: np.ndarray | None = None
    ) -> None:
        """One tokenised document; a full chunk is encoded, and then the part closes if it is due."""
        self.chunk_ids.append(doc_id)
        self.chunk.add(segments, n_tokens, truncated, whole)
        if self.chunk.n_docs >= self.part_docs or self.chunk.tokens >= self.chunk_tokens:
            self._encode_chunk()
            if (
                len(self.ids) >= self.part_docs
                or self.part_token_count >= self.part_tokens
                or _clock() - self.started >= self.part_seconds
            ):
                self._close()

    def finish(self) -> None:
        """Close the last part (an empty corpus still gets one, empty, part)."""
        if self.ids or self.chunk_ids or self.skipped or self.n_parts == 0:
            self._close()

    def _encode_chunk(self) -> None:
        if not self.chunk_ids:
            return
        self.vectors.append(self.encoder._run(self.chunk, self.progress))
        self.ids.extend(self.chunk_ids)
        self.n_tokens.extend(self.chunk.n_tokens)
        self.truncated.extend(self.chunk.truncated)
        self.part_token_count += self.chunk.tokens
        self.tokens += self.chunk.tokens
        self.chunk, self.chunk_ids = _Prepared(), []

    def _close(self) -> None:
        self._encode_chunk()
        emb_path, skip_path = _part_paths(self.parts_dir, self.n_parts)
        write_skipped(skip_path, self.skipped, self.id_kind)
        vectors = np.concatenate(self.vectors) if self.vectors else np.zeros((0, self.encoder.dim), np.float32)
        with EmbeddingWriter(emb_path, self.encoder.dim, self.encoder.model_id, self.id_kind) as writer:
            writer.write(self.ids, vectors, self.n_tokens, self.truncated)  # the part's commit point
        self.n_parts += 1
        self._reset()


# --------------------------------------------------------------------------------------------- utilities
def _windows(ids: np.ndarray, size: int, overlap: int) -> Iterable[np.ndarray]:
    """Consecutive windows of ``size`` tokens overlapping by ``overlap``, covering every token."""
    if len(ids) == 0:
        return []
    if len(ids) <= size:
        return [ids]
    stride = size - overlap
    starts = range(0, max(len(ids) - overlap, 1), stride)
    return [ids[s : s + size] for s in starts if s < len(ids)]


def _as_text_list(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("encode expects a list of texts, got a single str (wrap it in a list)")
    try:
        items = list(texts)
    except TypeError:
        raise TypeError(f"encode expects a list of texts, got {type(texts).__name__}") from None
    for i, text in enumerate(items):
        if not isinstance(text, str):
            raise TypeError(f"encode expects a list of str; item {i} is {type(text).__name__} ({text!r:.40})")
    return items
