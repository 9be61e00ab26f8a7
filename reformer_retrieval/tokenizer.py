"""`ByteTokenizer`: Unicode normalisation, then UTF-8 bytes as token ids.

The vocabulary is fixed: four special ids followed by the 256 byte values, so there is nothing to train,
no unknown token, and noisy text (OCR errors, odd scripts) never falls out of the vocabulary.
Truncation is never silent: every call reports, per text, how many tokens were read and whether the text
was cut at ``max_len``.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["ByteTokenizer", "TokenizerConfig"]

PAD_ID = 0
MASK_ID = 1
BOS_ID = 2
EOS_ID = 3
BYTE_OFFSET = 4
VOCAB_SIZE = 256 + BYTE_OFFSET

_NORMAL_FORMS = (None, "NFC", "NFKC", "NFD", "NFKD")
_WHITESPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class TokenizerConfig:
    """Settings of a `ByteTokenizer`, saved with a model as ``tokenizer.json``.

    Attributes:
        normalization: Unicode normal form applied before encoding (``None`` for none).
        lowercase: Lower-case the text before encoding.
        collapse_whitespace: Replace every run of whitespace with one space and strip the ends.
        max_len: Longest output in tokens; longer texts are truncated and reported as such.
    """

    normalization: str | None = "NFC"
    lowercase: bool = False
    collapse_whitespace: bool = False
    max_len: int = 65_536

    def __post_init__(self) -> None:
        if self.normalization not in _NORMAL_FORMS:
            raise ValueError(
                f"TokenizerConfig.normalization={self.normalization!r}: must be one of {_NORMAL_FORMS}"
            )
        if not isinstance(self.max_len, int) or self.max_len <= 0:
            raise ValueError(f"TokenizerConfig.max_len={self.max_len!r}: must be a positive integer")


class ByteTokenizer:
    """Turns texts into byte-level token ids.

    Ids: 0 = padding, 1 = mask, 2 = begin, 3 = end (reserved), ``4 + b`` for byte value ``b``.

    Example:
        >>> tok = ByteTokenizer()
        >>> batch = tok(["héllo", "hi"])
        >>> batch["input_ids"].shape, batch["n_tokens"]
        (torch.Size([2, 6]), [6, 2])
    """

    pad_token_id = PAD_ID
    mask_token_id = MASK_ID
    vocab_size = VOCAB_SIZE
    kind = "bytes"
    bytes_per_token = 1.0

    def __init__(
        self,
        max_len: int = 65_536,
        normalization: str | None = "NFC",
        lowercase: bool = False,
        collapse_whitespace: bool = False,
    ) -> None:
        self.config = TokenizerConfig(
            normalization=normalization,
            lowercase=lowercase,
            collapse_whitespace=collapse_whitespace,
            max_len=max_len,
        )

    @property
    def max_len(self) -> int:
        """Longest output in tokens."""
        return self.config.max_len

    def normalize(self, text: str) -> str:
        """Apply the configured normalisation to one text."""
        cfg = self.config
        if cfg.normalization is not None:
            text = unicodedata.normalize(cfg.normalization, text)
        if cfg.lowercase:
            text = text.lower()
        if cfg.collapse_whitespace:
            text = _WHITESPACE.sub(" ", text).strip()
        return text

    def encode(self, text: str, max_len: int | None = None) -> tuple[np.ndarray, int]:
        """Ids of one text (at most ``max_len``) and the number of tokens the full text has.

        Returns:
            ``(ids, total)``: an int64 array of at most ``max_len`` ids, and the untruncated length.
        """
        if not isinstance(text, str):
            raise TypeError(f"ByteTokenizer.encode expects a str, got {type(text).__name__}")
        limit = self.max_len if max_len is None else max_len
        data = self.normalize(text).encode("utf-8", errors="surrogatepass")
        total = len(data)
        ids = np.frombuffer(data[:limit], dtype=np.uint8).astype(np.int64) + BYTE_OFFSET
        return ids, total

    def decode(self, ids: Sequence[int] | torch.Tensor | np.ndarray) -> str:
        """Text of a sequence of ids (specials dropped; invalid UTF-8 replaced)."""
        arr = np.asarray(ids.tolist() if isinstance(ids, torch.Tensor) else ids, dtype=np.int64)
        arr = arr[arr >= BYTE_OFFSET] - BYTE_OFFSET
        return arr.astype(np.uint8).tobytes().decode("utf-8", errors="replace")

    def __call__(self, texts: Sequence[str] | str, max_len: int | None = None) -> dict[str, Any]:
        """Tokenise a list of texts into a padded batch.

        Returns:
            A dict with ``input_ids`` and ``attention_mask`` (long tensors of shape (batch, longest)),
            ``n_tokens`` (tokens read per text) and ``truncated`` (bool per text).

        Raises:
            TypeError: if ``texts`` is not a list/tuple of str (a single str is accepted as one text).
        """
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, Sequence) or isinstance(texts, bytes):
            raise TypeError(
                f"ByteTokenizer expects a str or a list of str, got {type(texts).__name__}"
            )
        encoded: list[np.ndarray] = []
        truncated: list[bool] = []
        limit = self.max_len if max_len is None else max_len
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(
                    f"ByteTokenizer expects a list of str; item {i} is {type(text).__name__}"
                )
            ids, total = self.encode(text, limit)
            encoded.append(ids)
            truncated.append(total > limit)
        longest = max((len(e) for e in encoded), default=0)
        input_ids = torch.full((len(encoded), longest), PAD_ID, dtype=torch.long)
        attention_mask = torch.zeros((len(encoded), longest), dtype=torch.long)
        for row, ids in enumerate(encoded):
            input_ids[row, : len(ids)] = torch.from_numpy(ids)
            attention_mask[row, : len(ids)] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "n_tokens": [len(e) for e in encoded],
            "truncated": truncated,
        }

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (kind + settings)."""
        return {"kind": self.kind, **asdict(self.config)}

    def save(self, directory: str | Path) -> Path:
        """Write ``tokenizer.json`` into ``directory`` atomically; returns its path."""
        from reformer_retrieval.atomic import atomic_write_text

        path = Path(directory) / "tokenizer.json"
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True))
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ByteTokenizer:
        """Rebuild a tokenizer from `to_dict` output."""
        data = dict(data)
        kind = data.pop("kind", "bytes")
        if kind != cls.kind:
            raise ValueError(f"tokenizer kind {kind!r} is not supported by ByteTokenizer")
        return cls(**data)

    @classmethod
    def load(cls, directory: str | Path) -> ByteTokenizer:
        """Read ``tokenizer.json`` from a model directory (defaults if the file is absent)."""
        path = Path(directory) / "tokenizer.json"
        if not path.exists():
            return cls()
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))

    def __repr__(self) -> str:
        c = self.config
        return (
            f"ByteTokenizer(max_len={c.max_len}, normalization={c.normalization!r}, "
            f"lowercase={c.lowercase}, collapse_whitespace={c.collapse_whitespace})"
        )
