"""Training data: the corpus reader, the held-out split, the length curriculum and the pair-view batch builder.

A training step's batch is a pure function of ``(seed, step)`` (`BatchBuilder.build`): documents, crops,
augmentations and position offsets are drawn from ``numpy.random.default_rng([seed, step])``. So batches can
be built in worker processes in any order, and a resumed run sees exactly the batches an uninterrupted one
would have seen.
"""

from __future__ import annotations

import bisect
import glob as _glob
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from reformer_retrieval.corpus_formats import (
    CorpusError,
    describe_columns,
    read_file_schema,
    resolve_field,
    resolve_sources,
    scan_file,
)
from reformer_retrieval.tokenizer import ByteTokenizer
from reformer_retrieval.train.augment import AugmentPolicy, crop

__all__ = [
    "BatchBuilder",
    "Corpus",
    "CorpusError",
    "CurriculumPhase",
    "PairBatch",
    "corpus_files",
    "read_corpus",
    "split_holdout",
]


# ------------------------------------------------------------------------------------------------ corpus
@dataclass
class Corpus:
    """Documents in memory.

    Attributes:
        ids: Document ids (as strings).
        texts: Document texts.
        clusters: Cluster label per document (strings) when a cluster column was read, else None.
        n_bytes: UTF-8 length of every text.
        files: The corpus files read.
        skipped: ``(file, id, reason)`` of rows that were skipped (null or empty text).
    """

    ids: list[str]
    texts: list[str]
    clusters: list[str] | None
    n_bytes: np.ndarray
    files: list[Path]
    skipped: list[tuple[str, str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, index: Sequence[int]) -> Corpus:
        """A corpus of the documents at ``index`` (in that order)."""
        idx = list(index)
        return Corpus(
            ids=[self.ids[i] for i in idx],
            texts=[self.texts[i] for i in idx],
            clusters=None if self.clusters is None else [self.clusters[i] for i in idx],
            n_bytes=self.n_bytes[idx],
            files=self.files,
            skipped=[],
        )


def corpus_files(path: str | Path) -> list[Path]:
    """The files of a corpus (Parquet, JSON Lines or CSV; see `reformer_retrieval.corpus_formats`): the file
    itself, a glob's matches, or a directory's ``train-*`` shards (all its corpus files if it has no such
    shard), sorted by name."""
    text = str(path)
    if "://" not in text and not _glob.has_magic(text) and not Path(text).exists():
        raise CorpusError(f"corpus {path} does not exist")
    files = resolve_sources(path)
    if Path(text).is_dir():
        return [f for f in files if f.name.startswith("train-")] or files
    return files


def read_corpus(
    path: str | Path,
    id_column: str = "id",
    text_column: str = "text",
    cluster_column: str | None = None,
) -> Corpus:
    """Read ``(id, text[, cluster])`` from a corpus file (Parquet, JSON Lines or CSV), a glob or a directory
    of shards; dotted column names reach nested fields.

    Rows with a null or empty text are skipped and listed in ``Corpus.skipped``; a null or duplicate id,
    or a missing column, raises `CorpusError` naming the file, the column and the row's id.
    """
    files = corpus_files(path)
    ids: list[str] = []
    texts: list[str] = []
    clusters: list[str] | None = [] if cluster_column else None
    n_bytes: list[np.ndarray] = []
    skipped: list[tuple[str, str, str]] = []
    seen: dict[str, Path] = {}
    columns = {"id": id_column, "text": text_column, **({"cluster": cluster_column} if cluster_column else {})}
    for file in files:
        schema = read_file_schema(file)
        if schema is None:  # an empty JSON Lines / CSV file
            continue
        for col in columns.values():
            if resolve_field(schema, col) is None:
                raise CorpusError(f"{file}: no column {col!r} (columns: {describe_columns(schema)})")
        text_type = resolve_field(schema, text_column)[1]  # type: ignore[index]
        if not (pa.types.is_string(text_type) or pa.types.is_large_string(text_type) or pa.types.is_null(text_type)):
            raise CorpusError(f"{file}: column {text_column!r} must hold strings, not {text_type}")
        row = 0
        for batch in scan_file(file, columns, batch_size=8192, schema=schema):
            col_ids = batch.column("id").to_pylist()
            col_text = batch.column("text")
            lengths = pc.fill_null(pc.binary_length(col_text.cast(pa.string())), 0).to_numpy(zero_copy_only=False)
            col_text = col_text.to_pylist()
            col_cluster = batch.column("cluster").to_pylist() if cluster_column else None
            keep = np.zeros(len(col_ids), dtype=bool)
            for offset, (doc_id, text) in enumerate(zip(col_ids, col_text)):
                if doc_id is None:
                    raise CorpusError(f"{file}: null value in column {id_column!r} at row {row + offset}")
                key = str(doc_id)
                if key in seen:
                    raise CorpusError(f"{file}: duplicate id {key!r} in column {id_column!r} (first seen in {seen[key]})")
                seen[key] = file
                if text is None or text == "":
                    skipped.append((str(file), key, "null text" if text is None else "empty text"))
                    continue
                if col_cluster is not None and clusters is not None:
                    label = col_cluster[offset]
                    if label is None:
                        raise CorpusError(f"{file}: null value in column {cluster_column!r} for id {key!r}")
                    clusters.append(str(label))
                ids.append(key)
                texts.append(text)
                keep[offset] = True
            n_bytes.append(np.asarray(lengths, dtype=np.int64)[keep])
            row += batch.num_rows
    if not ids:
        raise CorpusError(f"corpus {path} has no document with a non-empty {text_column!r}")
    return Corpus(ids, texts, clusters, np.concatenate(n_bytes), files, skipped)


def split_holdout(
    n_bytes: np.ndarray, n_val: int, seed: int, n_long: int = 0, long_bytes: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of document indices into ``(train, validation)``.

    ``n_val`` documents are held out, at least ``n_long`` of them (when that many exist) with
    ``n_bytes >= long_bytes``, so long-length validation has documents to work on.
    """
    n = len(n_bytes)
    if n_val <= 0:
        return np.arange(n), np.zeros(0, dtype=np.int64)
    if n_val >= n:
        raise ValueError(f"cannot hold out {n_val} of {n} documents for validation; lower val_docs")
    rng = np.random.default_rng([seed, 0x5EED])
    long_idx = np.flatnonzero(n_bytes >= long_bytes) if n_long > 0 else np.zeros(0, np.int64)
    take_long = rng.permutation(long_idx)[: min(n_long, len(long_idx), n_val)]
    rest = np.setdiff1d(np.arange(n), take_long)
    take_rest = rng.permutation(rest)[: n_val - len(take_long)]
    val = np.sort(np.concatenate([take_long, take_rest]).astype(np.int64))
    train = np.setdiff1d(np.arange(n), val)
    return train, val


# ------------------------------------------------------------------------------------------------ curriculum
@dataclass(frozen=True)
class CurriculumPhase:
    """One stage of the length curriculum.

    Attributes:
        until: The phase covers steps up to ``until * total_steps`` (fractions rise, the last is 1.0).
        max_tokens: Longest view in tokens (documents shorter than that are used whole).
        batch_size: Documents per optimizer step (each gives two views).
        micro_batch: Documents per forward pass (0 = the whole batch). Smaller micro-batches are combined
            exactly (gradient caching), so the loss still sees every in-batch negative.
        position_offset_prob: Probability that a view is placed at a random offset of the position axis
            (one offset per view batch, see `BatchBuilder._offsets`), so position rows that short crops never
            reach are trained; 0 keeps every view at position 0.
    """

    until: float
    max_tokens: int
    batch_size: int
    micro_batch: int = 0
    position_offset_prob: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 < self.until <= 1.0:
            raise ValueError(f"CurriculumPhase.until={self.until!r}: must lie in (0, 1]")
        if self.max_tokens <= 0 or self.batch_size < 2 or self.micro_batch < 0:
            raise ValueError(
                "CurriculumPhase: max_tokens must be > 0, batch_size >= 2 and micro_batch >= 0 "
                f"(got {self.max_tokens}, {self.batch_size}, {self.micro_batch})"
            )
        if not 0.0 <= self.position_offset_prob <= 1.0:
            raise ValueError(f"CurriculumPhase.position_offset_prob={self.position_offset_prob!r}: must lie in [0, 1]")

    @property
    def forward_batch(self) -> int:
        """Documents per forward pass."""
        return self.batch_size if self.micro_batch <= 0 else min(self.micro_batch, self.batch_size)


def phase_at(curriculum: Sequence[CurriculumPhase], step: int, total_steps: int) -> int:
    """Index of the phase that step ``step`` (0-based) of ``total_steps`` belongs to."""
    frac = (step + 0.5) / max(1, total_steps)
    ends = [p.until for p in curriculum]
    return min(bisect.bisect_left(ends, frac), len(curriculum) - 1)


# ------------------------------------------------------------------------------------------------ batches
@dataclass
class PairBatch:
    """Two views of each of ``len(doc_index)`` documents, as token id arrays.

    Attributes:
        step: The optimizer step this batch is for.
        phase: Curriculum phase index.
        doc_index: (B,) corpus index of each document.
        labels: (B,) int labels; equal labels are positives of each other (a document's own label, or its
            cluster's when supervised positives are used).
        views_a, views_b: Token ids of each document's two views (int16 arrays, no padding).
        offsets_a, offsets_b: (B,) first position of each view (0 = the usual positions); every offset
            plus the padded length of its view batch stays within the model's ``max_len``.
        augment_seconds: Time spent building the batch (for throughput diagnosis).
    """

    step: int
    phase: int
    doc_index: np.ndarray
    labels: np.ndarray
    views_a: list[np.ndarray]
    views_b: list[np.ndarray]
    offsets_a: np.ndarray
    offsets_b: np.ndarray
    augment_seconds: float = 0.0

    @property
    def n_tokens(self) -> int:
        """Real tokens in both views."""
        return int(sum(len(v) for v in self.views_a) + sum(len(v) for v in self.views_b))


class BatchBuilder:
    """Builds the `PairBatch` of any step from the corpus, deterministically.

    For every document: a window of the phase's length at a random place (the whole document if shorter);
    view A = an augmentation of the window; view B = an independent augmentation of the same window, or of a
    sub-window of it (a partial copy, with probability ``containment_prob``), or - with
    ``cluster_pair_prob`` and a cluster column - of a window of another document of the same cluster.

    Hard negatives (``same_doc_negatives`` > 0): that fraction of the batch's slots holds a second window
    of another slot's document, disjoint from that slot's window, under its own label. Two passages of one
    book share language, style and topic but not text, so the model must match text, not genre: the case
    of two articles of one site, or of documents that share a prefix. With a cluster column, a second window
    counts as a negative of the host's whole cluster (a member that overlaps it would be a false negative:
    keep ``same_doc_negatives`` low there).

    Args:
        texts: Every document's text (indexed by corpus index).
        n_bytes: UTF-8 length of every text.
        train_index: Corpus indices that may be drawn.
        curriculum: The length curriculum.
        total_steps: Length of the schedule (phases are fractions of it).
        tokenizer: Tokenizer applied to the views.
        policy: Augmentation policy of the views.
        seed: Seed of the run.
        max_len: The model's longest input (offsets keep ``offset + padded length <= max_len``).
        pad_multiple: The model pads to a multiple of this (used for the offset bound).
        strength: Overall augmentation strength.
        containment_prob: Probability that view B covers only part of view A's window.
        clusters: Optional cluster label per corpus index (ints), for supervised positives.
        cluster_pair_prob: Probability of drawing view B from another member of the document's cluster.
        same_doc_negatives: Fraction of the batch's slots given to disjoint second windows of other slots'
            documents (hard negatives; documents too short for two disjoint windows are not used).
    """

    def __init__(
        self,
        texts: Sequence[str],
        n_bytes: np.ndarray,
        train_index: np.ndarray,
        curriculum: Sequence[CurriculumPhase],
        total_steps: int,
        tokenizer: ByteTokenizer,
        policy: AugmentPolicy,
        seed: int,
        max_len: int,
        pad_multiple: int,
        strength: float = 1.0,
        containment_prob: float = 0.25,
        clusters: np.ndarray | None = None,
        cluster_pair_prob: float = 0.0,
        same_doc_negatives: float = 0.0,
    ) -> None:
        if len(train_index) < 2:
            raise ValueError("training needs at least two documents")
        self.texts = texts
        self.n_bytes = np.asarray(n_bytes, dtype=np.int64)
        self.train_index = np.asarray(train_index, dtype=np.int64)
        self.curriculum = list(curriculum)
        self.total_steps = int(total_steps)
        self.tokenizer = tokenizer
        self.policy = policy
        self.seed = int(seed)
        self.max_len = int(max_len)
        self.pad_multiple = int(pad_multiple)
        self.strength = float(strength)
        self.containment_prob = float(containment_prob)
        self.clusters = None if clusters is None else np.asarray(clusters, dtype=np.int64)
        self.cluster_pair_prob = float(cluster_pair_prob) if clusters is not None else 0.0
        if not 0.0 <= same_doc_negatives <= 0.5:
            raise ValueError(f"same_doc_negatives must be in [0, 0.5], got {same_doc_negatives}")
        self.same_doc_negatives = float(same_doc_negatives)
        self._members: dict[int, np.ndarray] = {}
        if self.clusters is not None:
            train_clusters = self.clusters[self.train_index]
            order = np.argsort(train_clusters, kind="stable")
            values, starts = np.unique(train_clusters[order], return_index=True)
            for k, (value, start) in enumerate(zip(values, starts)):
                end = starts[k + 1] if k + 1 < len(starts) else len(order)
                if end - start > 1:
                    self._members[int(value)] = self.train_index[order[start:end]]
        for phase in self.curriculum:
            if phase.max_tokens > self.max_len:
                raise ValueError(f"curriculum max_tokens={phase.max_tokens} exceeds the model's max_len={self.max_len}")

    # -------------------------------------------------------------------------------------- helpers
    def _window(self, rng: np.random.Generator, doc: int, max_tokens: int) -> str:
        """A random character window of about ``max_tokens`` tokens of document ``doc`` (whole if shorter)."""
        text = self.texts[doc]
        width = self._window_width(doc, max_tokens)
        if width == 0:
            return text
        start = int(rng.integers(0, len(text) - width + 1))
        return text[start : start + width]

    def _window_width(self, doc: int, max_tokens: int) -> int:
        """Width in characters of a ``max_tokens`` window of ``doc`` (0 when the whole document fits); a
        token is ``tokenizer.bytes_per_token`` bytes (1 for bytes, about 4 for BPE on English prose)."""
        text = self.texts[doc]
        n_bytes = int(self.n_bytes[doc])
        window_bytes = max_tokens * self.tokenizer.bytes_per_token
        if n_bytes <= window_bytes:
            return 0
        width = max(1, int(window_bytes / max(1.0, n_bytes / max(1, len(text)))))
        return 0 if width >= len(text) else width

    def _hard_negatives(
        self, rng: np.random.Generator, docs: np.ndarray, max_tokens: int
    ) -> tuple[np.ndarray, dict[int, str], list[int]]:
        """Give the last slots of ``docs`` to disjoint second windows of earlier slots' documents.

        Returns the new per-slot documents, the windows of every slot involved (hosts and second windows)
        and the slots of the second windows. Only documents at least two windows long can host; with fewer
        hosts, fewer slots are replaced (the rest keep their own documents).
        """
        k = len(docs)
        m = round(self.same_doc_negatives * k)
        windows: dict[int, str] = {}
        seconds: list[int] = []
        if m == 0:
            return docs, windows, seconds
        widths = [self._window_width(int(d), max_tokens) for d in docs.tolist()]
        hosts = [i for i in range(k - m) if widths[i] > 0 and 2 * widths[i] <= len(self.texts[int(docs[i])])]
        if not hosts:
            return docs, windows, seconds
        chosen = rng.choice(len(hosts), size=min(m, len(hosts)), replace=False)
        docs = docs.copy()
        for j, h in enumerate(sorted(hosts[int(c)] for c in chosen)):
            slot = k - 1 - j
            text, w = self.texts[int(docs[h])], widths[h]
            x, y = sorted(int(v) for v in rng.integers(0, len(text) - 2 * w + 1, size=2))
            first, second = text[x : x + w], text[y + w : y + 2 * w]  # disjoint: [x, x+w) and [y+w, y+2w)
            if rng.random() < 0.5:
                first, second = second, first
            docs[slot] = docs[h]
            windows[h], windows[slot] = first, second
            seconds.append(slot)
        return docs, windows, seconds

    def _encode(self, text: str, max_tokens: int, fallback: str) -> np.ndarray:
        ids, _ = self.tokenizer.encode(text, max_tokens)
        if len(ids) == 0:  # an augmentation removed everything: fall back to the un-augmented window
            ids, _ = self.tokenizer.encode(fallback, max_tokens)
        return ids.astype(np.int16 if self.tokenizer.vocab_size <= np.iinfo(np.int16).max else np.int32)

    def _offsets(self, rng: np.random.Generator, views: Sequence[np.ndarray], prob: float) -> np.ndarray:
        """One offset for a whole view batch: with probability ``prob`` uniform over the room the batch's
        padded length leaves below ``max_len``, else 0.

        The offset is shared by every document of the view batch on purpose: a position shift common to all
        documents cannot tell them apart, so the model cannot use positions as a shortcut to match views,
        while the two views of a document (drawn independently) sit at different positions and so teach
        invariance to where a text starts. (Per-document offsets made a tiny model collapse in testing.)
        """
        longest = max(len(v) for v in views)
        padded = max(self.pad_multiple, -(-longest // self.pad_multiple) * self.pad_multiple)
        room = self.max_len - padded
        shift = int(rng.integers(0, room + 1)) if prob > 0.0 and room > 0 and rng.random() < prob else 0
        return np.full(len(views), shift, dtype=np.int64)

    def sample_documents(self, rng: np.random.Generator, phase: CurriculumPhase) -> np.ndarray:
        """Distinct training documents, drawn with weight ``min(n_bytes, max_tokens)``, so a long phase is
        made mostly of documents long enough to fill it."""
        window_bytes = phase.max_tokens * self.tokenizer.bytes_per_token
        weights = np.minimum(self.n_bytes[self.train_index], window_bytes).astype(np.float64)
        k = min(phase.batch_size, len(self.train_index))
        return self.train_index[rng.choice(len(self.train_index), size=k, replace=False, p=weights / weights.sum())]

    # -------------------------------------------------------------------------------------- build
    def build(self, step: int) -> PairBatch:
        """The batch of optimizer step ``step`` (a pure function of the seed and the step)."""
        import time

        t0 = time.perf_counter()
        phase_idx = phase_at(self.curriculum, step, self.total_steps)
        phase = self.curriculum[phase_idx]
        rng = np.random.default_rng([self.seed, 0xBA7C4, step])
        docs = self.sample_documents(rng, phase)
        labels = (self.clusters[docs] if self.clusters is not None else docs).astype(np.int64)
        windows: dict[int, str] = {}
        seconds: list[int] = []
        if self.same_doc_negatives > 0:
            docs, windows, seconds = self._hard_negatives(
                np.random.default_rng([self.seed, 0x4A2D, step]), docs, phase.max_tokens
            )
            labels = labels.copy()
            labels[seconds] = -1 - np.asarray(seconds, dtype=np.int64)  # own class: its host's negative
        views_a: list[np.ndarray] = []
        views_b: list[np.ndarray] = []
        for slot, doc in enumerate(docs.tolist()):
            window = windows[slot] if slot in windows else self._window(rng, doc, phase.max_tokens)
            other_doc = doc
            if (
                self.cluster_pair_prob > 0
                and self.clusters is not None
                and slot not in seconds
                and rng.random() < self.cluster_pair_prob
            ):
                members = self._members.get(int(self.clusters[doc]))
                if members is not None:
                    other_doc = int(members[int(rng.integers(len(members)))])
            if other_doc != doc:
                window_b = self._window(rng, other_doc, phase.max_tokens)
            elif rng.random() < self.containment_prob:
                window_b = crop(window, rng, 1.0)
            else:
                window_b = window
            foreign_doc = int(self.train_index[int(rng.integers(len(self.train_index)))])
            foreign = [self._window(rng, foreign_doc, 2048)]
            a = self.policy.apply(window, rng, self.strength, foreign)
            b = self.policy.apply(window_b, rng, self.strength, foreign)
            views_a.append(self._encode(a, phase.max_tokens, window))
            views_b.append(self._encode(b, phase.max_tokens, window_b))
        offsets_a = self._offsets(rng, views_a, phase.position_offset_prob)
        offsets_b = self._offsets(rng, views_b, phase.position_offset_prob)
        return PairBatch(
            step=step,
            phase=phase_idx,
            doc_index=docs,
            labels=labels,
            views_a=views_a,
            views_b=views_b,
            offsets_a=offsets_a,
            offsets_b=offsets_b,
            augment_seconds=time.perf_counter() - t0,
        )


def collate(views: Sequence[np.ndarray], pad_id: int = 0) -> tuple[Any, Any]:
    """Right-pad token id arrays into ``(input_ids, attention_mask)`` long tensors."""
    import torch

    longest = max(len(v) for v in views)
    ids = np.full((len(views), longest), pad_id, dtype=np.int64)
    mask = np.zeros((len(views), longest), dtype=np.int64)
    for row, v in enumerate(views):
        ids[row, : len(v)] = v
        mask[row, : len(v)] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask)
