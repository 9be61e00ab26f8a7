"""`BPETokenizer`: a byte-level BPE vocabulary trained on a corpus (Hugging Face ``tokenizers``).

The alternative to `ByteTokenizer`: the same normalisation settings, then byte-level BPE, so sequences are
about 4x shorter on English prose (and no text is out of vocabulary: every byte is in the initial alphabet).
Ids 0-3 are the same specials as the byte tokenizer's (padding, mask, begin, end). A model directory that
uses it holds ``tokenizer.json`` (``"kind": "bpe"`` and the settings) and ``bpe.json``, the vocabulary in
the ``tokenizers`` JSON format (no pickle). Needs ``pip install tokenizers`` (the ``bpe`` extra).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reformer_retrieval.tokenizer import ByteTokenizer

__all__ = ["BPE_FILE", "BPETokenizer", "train_bpe"]

BPE_FILE = "bpe.json"
SPECIAL_TOKENS = ("[PAD]", "[MASK]", "[BOS]", "[EOS]")


def _tokenizers() -> Any:
    try:
        import tokenizers
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("BPE tokenizers need the 'tokenizers' package: pip install 'reformer-retrieval[bpe]'") from exc
    return tokenizers


class BPETokenizer(ByteTokenizer):
    """Normalisation as in `ByteTokenizer`, then a trained byte-level BPE vocabulary.

    Build one with `train_bpe`, save it with a model (`save`), load it with `load` or
    `reformer_retrieval.checkpoint.load_tokenizer`. Truncation is reported exactly as by `ByteTokenizer`:
    ``encode`` returns the ids and the untruncated token count.

    Args:
        backend: A ``tokenizers.Tokenizer`` whose first four ids are `SPECIAL_TOKENS`.
        bytes_per_token: Mean UTF-8 bytes per token on the training sample (windows of N tokens are cut
            as about ``N * bytes_per_token`` bytes of text in training).
        max_len, normalization, lowercase, collapse_whitespace: As for `ByteTokenizer`.
    """

    kind = "bpe"

    def __init__(
        self,
        backend: Any,
        bytes_per_token: float,
        max_len: int = 65_536,
        normalization: str | None = "NFC",
        lowercase: bool = False,
        collapse_whitespace: bool = False,
    ) -> None:
        super().__init__(max_len, normalization, lowercase, collapse_whitespace)
        for i, name in enumerate(SPECIAL_TOKENS):
            if backend.token_to_id(name) != i:
                raise ValueError(f"BPE vocabulary: special token {name} must have id {i}")
        self.backend = backend
        self.bytes_per_token = float(bytes_per_token)

    @property
    def vocab_size(self) -> int:  # type: ignore[override]
        """Number of token ids (the model's ``vocab_size``)."""
        return int(self.backend.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str, max_len: int | None = None) -> tuple[np.ndarray, int]:
        """Ids of one text (at most ``max_len``) and the number of tokens the full text has."""
        if not isinstance(text, str):
            raise TypeError(f"BPETokenizer.encode expects a str, got {type(text).__name__}")
        limit = self.max_len if max_len is None else max_len
        ids = np.asarray(self.backend.encode(self.normalize(text), add_special_tokens=False).ids, dtype=np.int64)
        return ids[:limit], len(ids)

    def decode(self, ids: Sequence[int] | torch.Tensor | np.ndarray) -> str:
        """Text of a sequence of ids (specials dropped)."""
        arr = np.asarray(ids.tolist() if isinstance(ids, torch.Tensor) else ids, dtype=np.int64)
        return self.backend.decode([int(i) for i in arr if i >= len(SPECIAL_TOKENS)])

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (kind, settings, vocabulary size, bytes per token)."""
        return {
            **super().to_dict(),
            "vocab_size": self.vocab_size,
            "bytes_per_token": self.bytes_per_token,  # unrounded: training windows depend on it (exact resume)
            "vocabulary_file": BPE_FILE,
        }

    def save(self, directory: str | Path) -> Path:
        """Write ``bpe.json`` and ``tokenizer.json`` into ``directory`` atomically; returns the latter."""
        from reformer_retrieval.atomic import atomic_write_text

        atomic_write_text(Path(directory) / BPE_FILE, self.backend.to_str())
        return super().save(directory)

    @classmethod
    def load(cls, directory: str | Path) -> BPETokenizer:
        """Read ``tokenizer.json`` and ``bpe.json`` from a model directory."""
        directory = Path(directory)
        data = json.loads((directory / "tokenizer.json").read_text(encoding="utf-8"))
        if data.get("kind") != cls.kind:
            raise ValueError(f"{directory / 'tokenizer.json'}: kind {data.get('kind')!r} is not 'bpe'")
        vocab = directory / data.get("vocabulary_file", BPE_FILE)
        if not vocab.is_file():
            raise FileNotFoundError(f"{directory} uses a BPE tokenizer but has no {vocab.name}")
        backend = _tokenizers().Tokenizer.from_str(vocab.read_text(encoding="utf-8"))
        tok = cls(
            backend,
            data["bytes_per_token"],
            max_len=data["max_len"],
            normalization=data["normalization"],
            lowercase=data["lowercase"],
            collapse_whitespace=data["collapse_whitespace"],
        )
        if tok.vocab_size != data["vocab_size"]:
            raise ValueError(f"{vocab}: {tok.vocab_size} tokens, tokenizer.json says {data['vocab_size']}")
        return tok

    def __repr__(self) -> str:
        c = self.config
        return (
            f"BPETokenizer(vocab_size={self.vocab_size}, max_len={c.max_len}, normalization={c.normalization!r}, "
            f"lowercase={c.lowercase}, collapse_whitespace={c.collapse_whitespace})"
        )


def train_bpe(
    texts: Iterable[str],
    vocab_size: int,
    max_len: int = 65_536,
    normalization: str | None = "NFC",
    lowercase: bool = False,
    collapse_whitespace: bool = False,
) -> BPETokenizer:
    """Train a byte-level BPE vocabulary of ``vocab_size`` ids on ``texts`` (normalised first).

    Deterministic for the same texts in the same order. ``bytes_per_token`` is measured on the same texts.

    Example:
        >>> tok = train_bpe(["the cat sat on the mat"] * 50, vocab_size=300)   # doctest: +SKIP
        >>> tok.encode("the cat")[1] < len("the cat")                          # doctest: +SKIP
        True
    """
    tk = _tokenizers()
    if vocab_size <= len(SPECIAL_TOKENS) + 256:
        raise ValueError(f"BPE vocab_size must exceed {len(SPECIAL_TOKENS) + 256} (specials + bytes), got {vocab_size}")
    plain = ByteTokenizer(max_len, normalization, lowercase, collapse_whitespace)
    sample = [plain.normalize(t) for t in texts]
    backend = tk.Tokenizer(tk.models.BPE())
    backend.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(sample, trainer)
    n_bytes = sum(len(t.encode("utf-8")) for t in sample)
    n_tokens = sum(len(e.ids) for e in backend.encode_batch(sample, add_special_tokens=False))
    return BPETokenizer(
        backend,
        n_bytes / max(1, n_tokens),
        max_len=max_len,
        normalization=normalization,
        lowercase=lowercase,
        collapse_whitespace=collapse_whitespace,
    )
