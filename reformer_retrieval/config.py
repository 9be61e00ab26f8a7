"""`ReformerConfig`: the validated, JSON-serialisable description of a `ReformerEncoder`.

Every field is documented below. A config is immutable once built (``frozen=True``): nothing in the
model writes into it at run time (bucket counts, for instance, are derived per call from the input
length and never stored back). Invalid combinations raise ``ValueError`` naming the field and the rule.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["NGRAM_FIELDS", "NGRAM_PROJECTIONS", "NGRAM_TF", "ReformerConfig"]

_ATTENTION_KINDS = ("lsh", "local")
NGRAM_FIELDS = ("ngram_size", "ngram_buckets", "ngram_dim", "ngram_weight", "ngram_tf", "ngram_projection")
"""The fields of the hashed n-gram channel (left out of `ReformerConfig.to_dict` while ``ngram_size`` is 0)."""
NGRAM_TF = ("raw", "log", "binary")
"""Values of ``ngram_tf``."""
NGRAM_PROJECTIONS = ("table", "sketch")
"""Values of ``ngram_projection``."""
ATTENTION_IMPLS = ("auto", "flex", "chunked")
"""Values of ``attention_impl``."""
_OMITTED_AT_DEFAULT = ("ngram_tf", "ngram_projection", "context_window", "attention_impl")
"""Fields added after models were published: left out of `ReformerConfig.to_dict` at their defaults, so those
models keep their config text and ``model_id``."""


@dataclass(frozen=True)
class ReformerConfig:
    """Hyper-parameters of a bidirectional Reformer encoder.

    Attributes:
        vocab_size: Number of token ids (the byte tokenizer uses 256 bytes + 4 specials = 260).
        pad_token_id: Id of the padding token (its embedding is never seen by real tokens).
        d_model: Width of each of the two reversible residual streams.
        n_layers: Number of [attention, feed-forward] layers in the reversible stack.
        n_heads: Attention heads per layer.
        d_head: Width of one head; ``None`` means ``d_model // n_heads``.
        d_ff: Inner width of the feed-forward block.
        embedding_dim: Width of the output embedding (the projection after pooling, plus ``ngram_dim`` when
            hashed n-grams are on).
        max_len: Longest accepted input in tokens; must fit the axial position shape.
        axial_pos_shape: Factorisation ``(n1, n2)`` of the position axis; ``n1 * n2 >= max_len``.
            Position ``p`` gets ``[E1[p // n2]; E2[p % n2]]``; shorter inputs use the prefix of the table.
        axial_pos_dims: Widths ``(d1, d2)`` of the two axial tables; ``d1 + d2 == d_model``.
        attention_layers: Kind of attention for each layer, ``"lsh"`` or ``"local"`` (length n_layers);
            ``None`` means LSH in every layer.
        chunk_size: Chunk length of LSH attention. Queries in a chunk attend their own chunk plus
            ``chunks_before`` / ``chunks_after`` neighbouring chunks of the same hash round.
        local_chunk_size: Chunk length of local attention layers; ``None`` means ``chunk_size``.
        chunks_before: Neighbouring chunks attended before each chunk (0 or 1).
        chunks_after: Neighbouring chunks attended after each chunk (0 or 1).
        n_hashes: Hash rounds in training.
        n_hashes_eval: Hash rounds in evaluation (may exceed ``n_hashes``); ``None`` means ``n_hashes``.
        num_buckets: Fixed bucket count (even, or a pair of even factors) or ``None`` to derive the count
            from each document's length (about two buckets per chunk, a power of two, factorised into two
            factors above ``bucket_factorise_above``). Derived counts depend on the document alone, never on
            the batch or the amount of padding, and are never frozen by a first call.
        bucket_factorise_above: Derived bucket counts above this value are split into two factors.
        hash_seed: Seed of the fixed random rotations (held as buffers and saved with the model).
        ff_chunk_size: Feed-forward is applied this many positions at a time (0 = all at once).
        dropout: Dropout on the outputs of the attention and feed-forward blocks (training only).
        attention_dropout: Dropout on the attention probabilities (training only).
        axial_init_std: Standard deviation of the axial position tables at initialisation.
        init_std: Standard deviation of the linear and token-embedding weights at initialisation.
        layer_norm_eps: Epsilon of every LayerNorm.
        reversible: Use the reversible stack (activation memory flat in depth). ``False`` runs the same
            weights with plain autograd; state dicts load across both.
        attention_budget: Upper bound on attention-score elements computed at once (memory knob; does
            not change results).
        ngram_size: Tokens per hashed n-gram; 0 turns the hashed n-gram channel off. When on, the embedding is
            the contextual channel (``embedding_dim - ngram_dim`` wide) followed by an idf-weighted bag of
            hashed n-gram vectors (``ngram_dim`` wide); see `reformer_retrieval.model.ngram_hash`.
        ngram_buckets: Rows of the hashed n-gram tables (log-weights; and vectors with ``ngram_projection``
            ``"table"``).
        ngram_dim: Width of the n-gram channel (less than ``embedding_dim``).
        ngram_weight: Share of the n-gram channel in the cosine of two embeddings (in (0, 1)).
        ngram_tf: How repeats of an n-gram in a document count: ``"raw"`` (every occurrence), ``"log"``
            (``1 + ln k`` for a bucket seen k times) or ``"binary"`` (once).
        ngram_projection: ``"table"`` (a learned vector per bucket) or ``"sketch"`` (a seeded count sketch:
            no vector table, so ``ngram_buckets`` can be large).
        context_window: How the contextual channel pools its token states. 0: one masked mean over the whole
            input (the models before distillation). ``w`` > 0: the mean over every ``w``-token window (positions
            ``[k*w, (k+1)*w)``), projected and L2-normalised per window, then the mean of the window vectors,
            normalised: the shape of the MiniLM chunk-mean baseline the channel is distilled from (a long document
            is a mean of many local views, not one mean that converges to the language's style).
        attention_impl: Kernel of the chunked (LSH and local) attention; never changes results beyond float
            rounding, so it is left out of ``to_dict`` (and the model id) at its default. ``"chunked"``: the
            masked path (on the CPU, PyTorch's fused attention kernel over the windows, forward and backward).
            ``"flex"``: block-sparse FlexAttention (`reformer_retrieval.model.flex_lsh`), falling back to
            ``"chunked"`` with one logged line where it cannot compile. ``"auto"``: the measured default,
            `flex_lsh.AUTO_FLEX_FROM` per device and mode (today the chunked path everywhere; see ``flex_lsh``).
        extra: Free-form JSON-serialisable metadata carried with the config (unused by the model).
    """

    vocab_size: int = 260
    pad_token_id: int = 0
    d_model: int = 256
    n_layers: int = 6
    n_heads: int = 4
    d_head: int | None = None
    d_ff: int = 512
    embedding_dim: int = 256
    max_len: int = 65_536
    axial_pos_shape: tuple[int, int] = (256, 256)
    axial_pos_dims: tuple[int, int] | None = None
    attention_layers: tuple[str, ...] | None = None
    chunk_size: int = 64
    local_chunk_size: int | None = None
    chunks_before: int = 1
    chunks_after: int = 1
    n_hashes: int = 4
    n_hashes_eval: int | None = None
    num_buckets: int | tuple[int, int] | None = None
    bucket_factorise_above: int = 128
    hash_seed: int = 0
    ff_chunk_size: int = 0
    dropout: float = 0.0
    attention_dropout: float = 0.0
    axial_init_std: float = 0.02
    init_std: float = 0.02
    layer_norm_eps: float = 1e-12
    reversible: bool = True
    attention_budget: int = 1 << 24
    ngram_size: int = 0
    ngram_buckets: int = 16_384
    ngram_dim: int = 128
    ngram_weight: float = 0.5
    ngram_tf: str = "raw"
    ngram_projection: str = "table"
    context_window: int = 0
    attention_impl: str = "auto"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Normalise sequence-like fields given as lists (e.g. from JSON) into tuples.
        for name in ("axial_pos_shape", "axial_pos_dims", "attention_layers"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        if isinstance(self.num_buckets, list):
            object.__setattr__(self, "num_buckets", tuple(self.num_buckets))
        self._validate()

    # ------------------------------------------------------------------ derived values
    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.d_head if self.d_head is not None else self.d_model // self.n_heads

    @property
    def context_dim(self) -> int:
        """Width of the contextual channel (the projection after pooling)."""
        return self.embedding_dim - self.ngram_dim if self.ngram_size else self.embedding_dim

    @property
    def layer_kinds(self) -> tuple[str, ...]:
        """Attention kind of every layer (``"lsh"`` or ``"local"``)."""
        return self.attention_layers if self.attention_layers is not None else ("lsh",) * self.n_layers

    @property
    def eval_hashes(self) -> int:
        """Hash rounds used in evaluation mode."""
        return self.n_hashes_eval if self.n_hashes_eval is not None else self.n_hashes

    @property
    def max_hashes(self) -> int:
        """Hash rounds the rotation buffers are sized for."""
        return max(self.n_hashes, self.eval_hashes)

    @property
    def local_chunk(self) -> int:
        """Chunk length of local attention layers."""
        return self.local_chunk_size if self.local_chunk_size is not None else self.chunk_size

    @property
    def axial_dims(self) -> tuple[int, int]:
        """Widths of the two axial position tables."""
        if self.axial_pos_dims is not None:
            return self.axial_pos_dims
        half = self.d_model // 2
        return (half, self.d_model - half)

    # ------------------------------------------------------------------ validation
    def _fail(self, name: str, rule: str) -> None:
        raise ValueError(f"ReformerConfig.{name}={getattr(self, name)!r}: {rule}")

    def _validate(self) -> None:
        positive = (
            "vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "embedding_dim", "max_len",
            "chunk_size", "n_hashes", "attention_budget", "bucket_factorise_above", "ngram_buckets", "ngram_dim",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                self._fail(name, "must be a positive integer")
        if not isinstance(self.context_window, int) or isinstance(self.context_window, bool) or self.context_window < 0:
            self._fail("context_window", "must be 0 (one mean) or a positive window width in tokens")
        if not 0 <= self.pad_token_id < self.vocab_size:
            self._fail("pad_token_id", f"must lie in [0, vocab_size={self.vocab_size})")
        if self.d_head is None:
            if self.d_model % self.n_heads != 0:
                self._fail("n_heads", f"must divide d_model={self.d_model} when d_head is None")
        elif not isinstance(self.d_head, int) or self.d_head <= 0:
            self._fail("d_head", "must be a positive integer or None")
        if len(self.axial_pos_shape) != 2 or any(
            not isinstance(n, int) or n <= 0 for n in self.axial_pos_shape
        ):
            self._fail("axial_pos_shape", "must be two positive integers (n1, n2)")
        if self.axial_pos_shape[0] * self.axial_pos_shape[1] < self.max_len:
            self._fail("axial_pos_shape", f"product must be >= max_len={self.max_len}")
        d1, d2 = self.axial_dims
        if d1 <= 0 or d2 <= 0 or d1 + d2 != self.d_model:
            self._fail("axial_pos_dims", f"must be two positive widths summing to d_model={self.d_model}")
        if self.attention_layers is not None:
            if len(self.attention_layers) != self.n_layers:
                self._fail("attention_layers", f"must have n_layers={self.n_layers} entries")
            bad = [k for k in self.attention_layers if k not in _ATTENTION_KINDS]
            if bad:
                self._fail("attention_layers", f"entries must be one of {_ATTENTION_KINDS}, got {bad}")
        if self.local_chunk_size is not None and (
            not isinstance(self.local_chunk_size, int) or self.local_chunk_size <= 0
        ):
            self._fail("local_chunk_size", "must be a positive integer or None")
        if self.max_len % math.lcm(self.chunk_size, self.local_chunk) != 0:
            self._fail("max_len", "must be a multiple of chunk_size (and of local_chunk_size)")
        for name in ("chunks_before", "chunks_after"):
            if getattr(self, name) not in (0, 1):
                self._fail(name, "must be 0 or 1")
        if self.n_hashes_eval is not None and (
            not isinstance(self.n_hashes_eval, int) or self.n_hashes_eval <= 0
        ):
            self._fail("n_hashes_eval", "must be a positive integer or None")
        if self.num_buckets is not None:
            factors = self.num_buckets if isinstance(self.num_buckets, tuple) else (self.num_buckets,)
            if len(factors) not in (1, 2) or any(
                not isinstance(f, int) or f < 2 or f % 2 for f in factors
            ):
                self._fail("num_buckets", "must be None, an even integer >= 2, or a pair of them")
        if not isinstance(self.hash_seed, int) or self.hash_seed < 0:
            self._fail("hash_seed", "must be a non-negative integer")
        if not isinstance(self.ff_chunk_size, int) or self.ff_chunk_size < 0:
            self._fail("ff_chunk_size", "must be a non-negative integer (0 = no chunking)")
        for name in ("dropout", "attention_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                self._fail(name, "must lie in [0, 1)")
        for name in ("axial_init_std", "init_std", "layer_norm_eps"):
            if not getattr(self, name) > 0:
                self._fail(name, "must be > 0")
        if not isinstance(self.reversible, bool):
            self._fail("reversible", "must be a bool")
        if not isinstance(self.ngram_size, int) or isinstance(self.ngram_size, bool) or self.ngram_size < 0:
            self._fail("ngram_size", "must be a non-negative integer (0 = off)")
        if not self.ngram_size:
            changed = [k for k in NGRAM_FIELDS[1:] if getattr(self, k) != _FIELD_DEFAULTS[k]]
            if changed:  # they would be left out of to_dict (and the model id): refuse rather than ignore
                self._fail(changed[0], "applies only with ngram_size > 0")
        if self.ngram_size and self.ngram_dim >= self.embedding_dim:
            self._fail("ngram_dim", f"must be less than embedding_dim={self.embedding_dim} (the rest is the contextual channel)")
        if not isinstance(self.ngram_weight, (int, float)) or isinstance(self.ngram_weight, bool):
            self._fail("ngram_weight", "must be a number in (0, 1)")
        if not 0.0 < self.ngram_weight < 1.0:
            self._fail("ngram_weight", "must lie in (0, 1)")
        if self.ngram_tf not in NGRAM_TF:
            self._fail("ngram_tf", f"must be one of {NGRAM_TF}")
        if self.ngram_projection not in NGRAM_PROJECTIONS:
            self._fail("ngram_projection", f"must be one of {NGRAM_PROJECTIONS}")
        if self.attention_impl not in ATTENTION_IMPLS:
            self._fail("attention_impl", f"must be one of {ATTENTION_IMPLS}")

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dictionary of every field (tuples become lists).

        The hashed n-gram fields are left out while n-grams are off, and ``ngram_tf`` / ``ngram_projection``
        at their defaults, so a model saved before they existed keeps its config text, and with it its
        ``model_id``.
        """
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        if not self.ngram_size:
            for key in NGRAM_FIELDS:
                out.pop(key)
        for key in _OMITTED_AT_DEFAULT:
            if key in out and out[key] == _FIELD_DEFAULTS[key]:
                out.pop(key)
        return out

    def to_json(self) -> str:
        """JSON text of the config (sorted keys, so equal configs give equal text)."""
        return json.dumps(self.to_dict(), sort_keys=True, indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReformerConfig:
        """Build a config from a dictionary; unknown keys raise ``ValueError`` naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"ReformerConfig: unknown field(s) {unknown}")
        return cls(**data)

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> ReformerConfig:
        """Build a config from JSON text or from the path of a JSON file."""
        if isinstance(text_or_path, Path) or not str(text_or_path).lstrip().startswith("{"):
            text = Path(text_or_path).read_text(encoding="utf-8")
        else:
            text = str(text_or_path)
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any) -> ReformerConfig:
        """A new validated config with some fields changed (the original is untouched)."""
        return dataclasses.replace(self, **changes)


_FIELD_DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(ReformerConfig)}
