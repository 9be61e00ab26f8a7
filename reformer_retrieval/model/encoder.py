"""`ReformerEncoder`: byte tokens -> one unit-length embedding per document.

token embedding + axial positions -> reversible stack of [shared-QK LSH (or local) attention, chunked
feed-forward] -> LayerNorm over both streams -> masked mean over real tokens -> projection -> L2 norm.
With hashed n-grams on (``config.ngram_size``), the embedding is the concatenation of that contextual channel,
scaled by sqrt(1 - ngram_weight), and the hashed n-gram channel (`reformer_retrieval.model.ngram_hash`), scaled by
sqrt(ngram_weight): a unit vector whose cosine is the weighted mean of the two channels' cosines.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from reformer_retrieval.config import ReformerConfig
from reformer_retrieval.model.feedforward import ChunkedFeedForward
from reformer_retrieval.model.local_attention import LocalSelfAttention
from reformer_retrieval.model.lsh_attention import LSHSelfAttention, SequenceInfo
from reformer_retrieval.model.ngram_hash import HashedNgrams
from reformer_retrieval.model.positions import AxialPositionEmbedding
from reformer_retrieval.model.reversible import ReformerLayer, ReversibleStack

__all__ = ["ReformerEncoder"]


class ReformerEncoder(nn.Module):
    """Bidirectional Reformer encoder producing L2-normalised document embeddings.

    Example:
        >>> from reformer_retrieval import ByteTokenizer, ReformerConfig, ReformerEncoder
        >>> model = ReformerEncoder(ReformerConfig(d_model=64, n_layers=2, n_heads=2, d_ff=128,
        ...                                        embedding_dim=32)).eval()
        >>> batch = ByteTokenizer()(["a document", "another one"])
        >>> model(batch["input_ids"], batch["attention_mask"]).shape
        torch.Size([2, 32])
    """

    def __init__(self, config: ReformerConfig | None = None) -> None:
        super().__init__()
        config = config if config is not None else ReformerConfig()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.position_embedding = AxialPositionEmbedding(
            config.axial_pos_shape, config.axial_dims, config.axial_init_std
        )
        self.ngrams: HashedNgrams | None = None
        if config.ngram_size:
            self.ngrams = HashedNgrams(
                config.ngram_size, config.ngram_buckets, config.ngram_dim, config.hash_seed, config.pad_token_id,
                tf=config.ngram_tf, projection=config.ngram_projection,
            )
        layers = []
        for i, kind in enumerate(config.layer_kinds):
            attention = LSHSelfAttention(config, i) if kind == "lsh" else LocalSelfAttention(config, i)
            ff = ChunkedFeedForward(
                config.d_model, config.d_ff, config.dropout, config.ff_chunk_size, config.layer_norm_eps
            )
            layers.append(ReformerLayer(attention, ff))
        self.stack = ReversibleStack(layers, reversible=config.reversible)
        self.final_norm = nn.LayerNorm(2 * config.d_model, eps=config.layer_norm_eps)
        self.projection = nn.Linear(2 * config.d_model, config.context_dim)
        self.pad_multiple = math.lcm(config.chunk_size, config.local_chunk)
        self._init_weights()

    def _init_weights(self) -> None:
        std = self.config.init_std
        for module in self.modules():
            if isinstance(module, HashedNgrams):
                module.reset_parameters()
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding) and module is not getattr(self.ngrams, "embedding", None):
                nn.init.normal_(module.weight, std=std)

    # ------------------------------------------------------------------ forward
    @property
    def attention_layers(self) -> list[LSHSelfAttention]:
        """The attention block of every layer, in order."""
        return [layer.attention for layer in self.stack.layers]

    def compile_attention_for_training(self, enabled: bool = True) -> None:
        """Run every attention layer's training forward through the inductor-compiled chunked attention
        (`reformer_retrieval.model.compiled_training`; a runtime switch, not saved with the model). Worth it
        under bf16 autocast on the CPU; no-grad forwards, inference and layers with attention dropout are
        unaffected."""
        for layer in self.attention_layers:
            layer.compile_training = bool(enabled)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        return_token_states: bool = False,
        position_offsets: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Embed a batch of token sequences.

        Args:
            input_ids: (batch, length) long tensor, length <= ``config.max_len``.
            attention_mask: (batch, length), 1/True at real tokens; ``None`` means all real.
            return_token_states: Also return the normalised token states (batch, length, 2 * d_model).
            position_offsets: Optional (batch,) first position of each row (training aid: lets short crops
                train positions that long documents reach); inference uses 0.

        Returns:
            (batch, embedding_dim) float32 unit vectors (a document with no real token gets the zero
            vector), and the token states if asked.
        """
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
        L0 = input_ids.shape[1]
        if self.config.max_len < L0:
            raise ValueError(f"input of {L0} tokens exceeds config.max_len={self.config.max_len}")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        elif attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask shape {tuple(attention_mask.shape)} != input_ids shape {tuple(input_ids.shape)}"
            )
        mask = attention_mask.to(torch.bool)
        emb, states = self._contextual(input_ids, mask, position_offsets)
        if self.ngrams is not None:
            share = self.config.ngram_weight
            lexical = self.ngrams(input_ids, mask)
            emb = torch.cat([emb * math.sqrt(1.0 - share), lexical * math.sqrt(share)], dim=-1)
        if return_token_states:
            return emb, states[:, :L0]
        return emb

    def contextual(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
        position_offsets: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The contextual (Reformer) channel alone: (batch, context_dim) float32 unit vectors, no lexical
        channel computed (`Encoder` adds the lexical channel in numpy over the whole document)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        return self._contextual(input_ids, attention_mask.to(torch.bool), position_offsets)[0]

    def _contextual(
        self, input_ids: torch.Tensor, mask: torch.Tensor, position_offsets: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        L0 = input_ids.shape[1]
        L = max(self.pad_multiple, -(-L0 // self.pad_multiple) * self.pad_multiple)
        if self.config.max_len < L:
            raise ValueError(f"padded length {L} exceeds config.max_len={self.config.max_len}")
        if L != L0:
            input_ids = F.pad(input_ids, (0, L - L0), value=self.config.pad_token_id)
            mask = F.pad(mask, (0, L - L0), value=False)
        positions = self.position_embedding(L, position_offsets)
        x = self.token_embedding(input_ids) + positions.to(self.token_embedding.weight.dtype)
        info = SequenceInfo.from_mask(mask)
        y1, y2 = self.stack(x, x, info)
        states = self.final_norm(torch.cat([y1, y2], dim=-1))
        if self.config.context_window:
            windows = torch.arange(L, device=states.device) // self.config.context_window
            emb = self.pool_windows(states, mask, windows.unsqueeze(0).expand(states.shape[0], L))
            return emb, states
        weights = mask.unsqueeze(-1).to(torch.float32)
        counts = weights.sum(dim=1)
        pooled = (states.float() * weights).sum(dim=1) / counts.clamp(min=1.0)
        emb = self.projection(pooled.to(states.dtype)).float()
        return F.normalize(emb, dim=-1) * (counts > 0).float(), states

    @staticmethod
    def window_means(
        states: torch.Tensor, mask: torch.Tensor, windows: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean token state of every window (``context_window`` pooling, before the projection).

        Args:
            states: (batch, length, 2 * d_model) token states.
            mask: (batch, length) bool, True at real tokens (a shorter mask: the rest is padding).
            windows: (batch, length) long, the window of every position (non-decreasing along a row, from 0).

        Returns:
            ``(means, present)``: (batch, n_windows, 2 * d_model) in the states' dtype (zero for a window with no
            real token) and (batch, n_windows) bool, True where a window has a real token.
        """
        batch, length, width = states.shape
        if mask.shape[1] < length:  # states of a padded input: padding is no real token, in the last window
            extra = length - mask.shape[1]
            mask = F.pad(mask, (0, extra), value=False)
            windows = torch.cat([windows, windows[:, -1:].expand(batch, extra)], dim=1)
        n_windows = int(windows.max().item()) + 1 if windows.numel() else 1
        weights = mask.to(torch.float32)
        index = (windows + torch.arange(batch, device=windows.device).unsqueeze(1) * n_windows).reshape(-1)
        sums = torch.zeros(batch * n_windows, width, dtype=torch.float32, device=states.device)
        sums = sums.index_add(0, index, (states.float() * weights.unsqueeze(-1)).reshape(-1, width))
        counts = torch.zeros(batch * n_windows, dtype=torch.float32, device=states.device)
        counts = counts.index_add(0, index, weights.reshape(-1))
        means = (sums / counts.clamp(min=1.0).unsqueeze(-1)).to(states.dtype)
        return means.view(batch, n_windows, width), (counts > 0).view(batch, n_windows)

    def window_vectors(
        self, states: torch.Tensor, mask: torch.Tensor, windows: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected, L2-normalised `window_means`: ``(vectors, present)``, (batch, n_windows, context_dim) float32
        unit vectors (zero for a window with no real token) and the windows' presence."""
        means, present = self.window_means(states, mask, windows)
        vectors = F.normalize(self.projection(means).float(), dim=-1)
        return vectors * present.unsqueeze(-1), present

    def pool_windows(self, states: torch.Tensor, mask: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
        """The contextual channel from window vectors: their mean over the windows with a real token, normalised
        ((batch, context_dim) float32; zero for a row with no real token)."""
        vectors, _ = self.window_vectors(states, mask, windows)
        return F.normalize(vectors.sum(dim=1), dim=-1)

    def channels(self) -> dict[str, tuple[slice, float]]:
        """Columns of each channel of the embedding and its share of the cosine: ``{"contextual": (slice, 1.0)}``,
        plus ``"lexical"`` (the hashed n-gram bag) when hashed n-grams are on (shares ``1 - ngram_weight`` and
        ``ngram_weight``)."""
        cfg = self.config
        if not cfg.ngram_size:
            return {"contextual": (slice(0, cfg.embedding_dim), 1.0)}
        return {
            "contextual": (slice(0, cfg.context_dim), 1.0 - cfg.ngram_weight),
            "lexical": (slice(cfg.context_dim, cfg.embedding_dim), cfg.ngram_weight),
        }

    def channel_record(self) -> dict[str, dict[str, Any]]:
        """What each channel of the embedding is, for ``training.json`` and reports: its columns, share of the
        cosine and a one-line description."""
        cfg = self.config
        pooling = (f"mean of per-window vectors ({cfg.context_window}-token windows)" if cfg.context_window
                   else "one mean over the document's token states")
        describe = {
            "contextual": f"the Reformer's token states ({cfg.n_layers} layers), {pooling}, projected and normalised",
            "lexical": (f"hashed {cfg.ngram_size}-token n-grams in {cfg.ngram_buckets:,} buckets, {cfg.ngram_tf} term "
                        f"frequency x learned idf weights, {cfg.ngram_projection} to {cfg.ngram_dim} dimensions; "
                        "no neural network"),
        }
        return {
            name: {"columns": [columns.start, columns.stop], "share": round(share, 6), "what": describe[name]}
            for name, (columns, share) in self.channels().items()
        }

    # ------------------------------------------------------------------ identity and persistence
    @property
    def model_id(self) -> str:
        """Short fingerprint of the config and every weight and buffer (12 hex characters)."""
        h = hashlib.sha256(self.config.to_json().encode("utf-8"))
        for name, tensor in sorted(self.state_dict().items()):
            t = tensor.detach().to("cpu").contiguous()
            h.update(name.encode("utf-8"))
            h.update(str(t.dtype).encode("utf-8"))
            h.update(str(tuple(t.shape)).encode("utf-8"))
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return h.hexdigest()[:12]

    def num_parameters(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters())

    def save_pretrained(
        self,
        directory: str | Path,
        tokenizer: Any | None = None,
        training: dict[str, Any] | None = None,
    ) -> Path:
        """Write ``config.json``, ``model.safetensors`` (+ ``tokenizer.json``, ``training.json``).

        Every file is written atomically; no pickle is involved. Returns the directory.
        """
        from reformer_retrieval.checkpoint import save_model

        return save_model(self, directory, tokenizer=tokenizer, training=training)

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> ReformerEncoder:
        """Load a model saved by `save_pretrained` (config + safetensors weights)."""
        from reformer_retrieval.checkpoint import load_model

        return load_model(directory, map_location=map_location)
