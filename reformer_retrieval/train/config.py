"""`TrainConfig`: every setting of a training run, as a typed dataclass with a JSON round trip."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reformer_retrieval.config import ReformerConfig
from reformer_retrieval.train.augment import PRESETS, AugmentPolicy
from reformer_retrieval.train.data import CurriculumPhase

__all__ = ["BPE_FIELDS", "RUNTIME_FIELDS", "TrainConfig", "settings_from_json"]

def settings_from_json(cls: Any, path: str | Path, what: str) -> Any:
    """A settings dataclass ``cls`` from a JSON object (keys starting with ``_`` are comments); a key ``cls`` has
    no field for raises ``ValueError`` naming the file and the ``what`` settings."""
    data = {k: v for k, v in json.loads(Path(path).read_text()).items() if not k.startswith("_")}
    unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"{path}: unknown {what} settings {sorted(unknown)}")
    return cls(**data)


BPE_FIELDS = frozenset({"kind", "vocab_size", "train_bytes"})
"""Keys of ``TrainConfig.tokenizer`` that choose and size the vocabulary (the rest are normalisation settings)."""

BPE_TRAIN_BYTES = 8_000_000
"""Default size of the corpus sample a BPE vocabulary is trained on."""

RUNTIME_FIELDS = frozenset(
    {
        "max_minutes", "device", "num_workers", "prefetch", "checkpoint_every", "checkpoint_seconds", "log_every",
        "eval_every", "progress",
    }
)
"""Fields that may differ when a run is resumed (they do not change what is learned)."""


def _default_curriculum() -> list[CurriculumPhase]:
    return [
        CurriculumPhase(until=0.6, max_tokens=512, batch_size=64, position_offset_prob=0.75),
        CurriculumPhase(until=1.0, max_tokens=2048, batch_size=32, position_offset_prob=0.5),
    ]


@dataclass(frozen=True)
class TrainConfig:
    """Settings of a training run (``reformer-retrieval train --config FILE`` reads this as JSON).

    Attributes:
        model: `ReformerConfig` fields of the model to train (missing fields take their defaults).
        init_from: A model directory (``save_model`` layout, e.g. the shipped default) whose weights start
            the run instead of a random initialisation: fine-tuning. Its architecture and tokenizer are used;
            ``model`` and ``tokenizer``, where given, must agree with them, except for the n-gram fields (with
            ``embedding_dim`` = its contextual width + ``ngram_dim``): those add or replace the hashed n-gram
            channel (started at the idf) and keep every contextual weight.
        tokenizer: `ByteTokenizer` settings (``normalization``, ``lowercase``, ``collapse_whitespace``); the
            model directory records them, and encoding applies the same ones. ``"kind": "bpe"`` with
            ``vocab_size`` (and optionally ``train_bytes``, default 8,000,000) trains a byte-level BPE
            vocabulary (`BPETokenizer`) on a seeded sample of the training split first; the model's
            ``vocab_size`` follows it.
        ngram_idf_docs: With hashed n-grams on (``model.ngram_size``), the pooling weights of a model that does
            not bring its own start at the idf of each n-gram bucket over this many training documents (a
            seeded sample; each read up to ``ngram_idf_tokens`` tokens).
        ngram_idf_tokens: Tokens read per document for that idf.
        ngram_idf_power: The start weight is ``idf ** ngram_idf_power`` (0: plain mean pooling).
        steps: Optimizer steps of the schedule (with ``auto_steps``: the upper bound).
        auto_steps: Measure the step time of every curriculum phase on this machine first and choose the
            number of steps that fills ``max_minutes`` (evaluations and saves included).
        lr: Peak learning rate (AdamW).
        min_lr_ratio: The cosine decay ends at ``lr * min_lr_ratio``.
        warmup: Linear warm-up, as a fraction of ``steps``.
        weight_decay: AdamW weight decay (not applied to biases, norms and embedding tables).
        betas: AdamW betas.
        grad_clip: Clip the global gradient norm to this value (0 = off).
        seed: Seed of everything random in the run (initialisation, data, augmentation, dropout).
        temperature: InfoNCE softmax temperature.
        curriculum: Length curriculum, see `CurriculumPhase` (``until`` fractions rise to 1.0).
        augment: Augmentation policy of the views: a preset name (see `augment.PRESETS`) or a policy dict.
        augment_strength: Overall augmentation strength in [0, 1].
        containment_prob: Probability that view B covers only part of view A's window (a partial copy).
        same_doc_negatives: Fraction of each batch given to hard negatives: a second window of another
            batch document, disjoint from that document's window (same style and topic, different text).
        id_column, text_column: Corpus column names.
        cluster_column: Optional corpus column of cluster labels: documents with equal labels are extra
            positives (supervised near-duplicates).
        cluster_pair_prob: With a cluster column, probability that view B comes from another member of the
            document's cluster.
        val_docs: Documents held out from training for validation (0 = no validation).
        val_long_docs: Of those, how many must be at least ``max(eval_lengths)`` bytes long (when available).
        eval_lengths: Validation lengths in tokens: recall@1 of finding each held-out document's augmented
            copy (both cut to this length) among all held-out documents.
        eval_all_max_tokens: Validation lengths up to this use every held-out document; longer ones only the
            long documents (``recall@1_long/<length>``, long documents among long documents, is reported at
            every length, so 4K and 64K compare the same documents).
        eval_preset, eval_strength: The augmentation that makes the validation copies (fixed seed).
        labelled_max_docs: With ``--labelled``, use at most this many of its documents (whole clusters,
            seeded choice; 0 = all).
        labelled_max_tokens: With ``--labelled``, documents are cut to this many tokens (the count of cut
            documents is reported).
        eval_batch_tokens: Padded tokens per forward pass in validation.
        eval_every: Validate every this many steps (0 = only at the start and the end).
        eval_at_start: Validate the untrained model first (the random-initialisation baseline; it also
            times a validation, which the budget reserves for the final one). If off, that time is
            estimated from a few documents.
        checkpoint_every: Write a checkpoint every this many steps (0 = only at the end).
        checkpoint_seconds: Also write one once this many seconds have passed since the last (0 = off), so an
            interrupted run loses at most about this much training whatever the step time.
        log_every: Append a line to ``metrics.jsonl`` every this many steps.
        max_minutes: Wall-clock budget of the whole run; training stops in time to validate and save the
            final model within it (None = no limit).
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        bf16: bfloat16 autocast on CUDA (ignored on CPU).
        num_workers: Processes building batches (augmentation runs on the CPU); 0 = in the main process.
        prefetch: Batches built ahead of the training step.
        progress: Show a tqdm progress bar.
    """

    model: dict[str, Any] = field(default_factory=dict)
    init_from: str | None = None
    tokenizer: dict[str, Any] = field(
        default_factory=lambda: {"normalization": "NFKC", "lowercase": True, "collapse_whitespace": True}
    )
    ngram_idf_docs: int = 2000
    ngram_idf_tokens: int = 16384
    ngram_idf_power: float = 2.0
    steps: int = 1000
    auto_steps: bool = False
    lr: float = 1e-3
    min_lr_ratio: float = 0.05
    warmup: float = 0.05
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 1.0
    seed: int = 0
    temperature: float = 0.05
    curriculum: tuple[CurriculumPhase, ...] = field(default_factory=lambda: tuple(_default_curriculum()))
    augment: str | dict[str, Any] = "near_duplicate"
    augment_strength: float = 1.0
    containment_prob: float = 0.25
    same_doc_negatives: float = 0.0
    id_column: str = "id"
    text_column: str = "text"
    cluster_column: str | None = None
    cluster_pair_prob: float = 0.5
    val_docs: int = 128
    val_long_docs: int = 32
    eval_lengths: tuple[int, ...] = (4096,)
    eval_all_max_tokens: int = 8192
    eval_preset: str = "near_duplicate"
    eval_strength: float = 0.6
    labelled_max_docs: int = 0
    labelled_max_tokens: int = 16384
    eval_batch_tokens: int = 1 << 17
    eval_every: int = 0
    eval_at_start: bool = True
    checkpoint_every: int = 0
    checkpoint_seconds: float = 120.0
    log_every: int = 10
    max_minutes: float | None = None
    device: str = "auto"
    bf16: bool = True
    num_workers: int = 0
    prefetch: int = 4
    progress: bool = True

    def __post_init__(self) -> None:
        phases = tuple(p if isinstance(p, CurriculumPhase) else CurriculumPhase(**p) for p in self.curriculum)
        object.__setattr__(self, "curriculum", phases)
        for name in ("betas", "eval_lengths"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        self._validate()

    def _fail(self, name: str, rule: str) -> None:
        raise ValueError(f"TrainConfig.{name}={getattr(self, name)!r}: {rule}")

    def _validate(self) -> None:
        self.model_config()  # raises ValueError naming a bad model field
        for name in ("steps", "log_every", "prefetch", "eval_all_max_tokens"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                self._fail(name, "must be a positive integer")
        for name in ("val_docs", "val_long_docs", "eval_every", "checkpoint_every", "num_workers", "labelled_max_docs"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                self._fail(name, "must be a non-negative integer")
        for name in ("ngram_idf_docs", "ngram_idf_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                self._fail(name, "must be a positive integer")
        if not (isinstance(self.ngram_idf_power, (int, float)) and math.isfinite(self.ngram_idf_power)) or (
            self.ngram_idf_power < 0
        ):
            self._fail("ngram_idf_power", "must be a finite number >= 0")
        if self.lr <= 0:
            self._fail("lr", "must be > 0")
        for name in ("min_lr_ratio", "warmup", "augment_strength", "containment_prob", "cluster_pair_prob", "eval_strength"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                self._fail(name, "must lie in [0, 1]")
        if not 0.0 <= self.same_doc_negatives <= 0.5:
            self._fail("same_doc_negatives", "must lie in [0, 0.5] (each hard negative needs a host slot)")
        if self.temperature <= 0:
            self._fail("temperature", "must be > 0")
        if self.grad_clip < 0 or self.weight_decay < 0:
            self._fail("grad_clip" if self.grad_clip < 0 else "weight_decay", "must be >= 0")
        if not self.curriculum:
            self._fail("curriculum", "needs at least one phase")
        ends = [p.until for p in self.curriculum]
        if any(b <= a for a, b in itertools.pairwise(ends)) or ends[-1] != 1.0:
            self._fail("curriculum", "phase 'until' fractions must rise strictly and end at 1.0")
        max_len = self.model_config().max_len
        for p in self.curriculum:
            if p.max_tokens > max_len:
                self._fail("curriculum", f"a phase's max_tokens={p.max_tokens} exceeds the model's max_len={max_len}")
        if not self.eval_lengths or any(not isinstance(n, int) or n <= 0 for n in self.eval_lengths):
            self._fail("eval_lengths", "must be positive token counts")
        if self.val_docs and max(self.eval_lengths) > max_len:
            self._fail("eval_lengths", f"must not exceed the model's max_len={max_len} (or set val_docs to 0)")
        if not (isinstance(self.checkpoint_seconds, (int, float)) and self.checkpoint_seconds >= 0):
            self._fail("checkpoint_seconds", "must be a number >= 0 (0 = no checkpoint by time)")
        if self.max_minutes is not None and self.max_minutes <= 0:
            self._fail("max_minutes", "must be > 0 or null")
        if self.auto_steps and self.max_minutes is None:
            self._fail("auto_steps", "needs max_minutes (the budget the steps are chosen to fill)")
        if self.eval_preset not in PRESETS:
            self._fail("eval_preset", f"must be one of {sorted(PRESETS)}")
        self.augment_policy()
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            self._fail("device", "must be 'auto', 'cpu', 'cuda' or 'cuda:N'")
        from reformer_retrieval.tokenizer import TokenizerConfig

        kind = self.tokenizer_kind
        if kind not in ("bytes", "bpe"):
            self._fail("tokenizer", f"kind must be 'bytes' or 'bpe', got {kind!r}")
        if kind == "bpe" and not (isinstance(self.tokenizer.get("vocab_size"), int) and self.tokenizer["vocab_size"] > 260):
            self._fail("tokenizer", "a 'bpe' tokenizer needs an integer vocab_size > 260")
        if kind == "bytes" and BPE_FIELDS & (set(self.tokenizer) - {"kind"}):
            self._fail("tokenizer", "vocab_size and train_bytes apply to 'kind': 'bpe' only")
        train_bytes = self.bpe_train_bytes
        if not isinstance(train_bytes, int) or train_bytes <= 0:
            self._fail("tokenizer", f"train_bytes must be a positive integer, got {train_bytes!r}")
        try:
            TokenizerConfig(**{**self.tokenizer_settings(), "max_len": max_len})
        except TypeError as exc:
            raise ValueError(f"TrainConfig.tokenizer: {exc}") from exc

    # ------------------------------------------------------------------ derived objects
    @property
    def tokenizer_kind(self) -> str:
        """``"bytes"`` (the default) or ``"bpe"``."""
        return self.tokenizer.get("kind", "bytes")

    @property
    def bpe_train_bytes(self) -> int:
        """Size of the corpus sample a BPE vocabulary is trained on."""
        return self.tokenizer.get("train_bytes", BPE_TRAIN_BYTES)

    def tokenizer_settings(self) -> dict[str, Any]:
        """The normalisation settings of ``tokenizer`` (`ByteTokenizer` / `BPETokenizer` keyword arguments)."""
        return {k: v for k, v in self.tokenizer.items() if k not in BPE_FIELDS}

    def model_config(self) -> ReformerConfig:
        """The `ReformerConfig` of the model to train."""
        return ReformerConfig.from_dict(dict(self.model))

    def augment_policy(self) -> AugmentPolicy:
        """The augmentation policy of the training views."""
        if isinstance(self.augment, str):
            if self.augment not in PRESETS:
                self._fail("augment", f"must be one of {sorted(PRESETS)} or a policy dict")
            return PRESETS[self.augment]
        return AugmentPolicy.from_dict(self.augment)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dictionary (tuples become lists, phases dicts)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "curriculum":
                value = [dataclasses.asdict(p) for p in value]
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    def to_json(self) -> str:
        """JSON text (sorted keys)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a dictionary; unknown keys raise ``ValueError`` naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"TrainConfig: unknown field(s) {unknown}")
        data = dict(data)
        if "curriculum" in data:
            data["curriculum"] = tuple(CurriculumPhase(**p) if isinstance(p, dict) else p for p in data["curriculum"])
        return cls(**data)

    @classmethod
    def from_json(cls, path: str | Path) -> TrainConfig:
        """Read a JSON file (keys starting with ``_`` are comments and ignored)."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read training config {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError(f"training config {path} must hold a JSON object")
        data = {k: v for k, v in data.items() if not k.startswith("_")}
        try:
            return cls.from_dict(data)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"training config {path}: {exc}") from exc

    def replace(self, **changes: Any) -> TrainConfig:
        """A new validated config with some fields changed."""
        return dataclasses.replace(self, **changes)
