"""Model directories: ``config.json`` + ``model.safetensors`` (+ ``tokenizer.json``, ``training.json``).

No pickle anywhere: weights are safetensors, everything else JSON. Every file is written atomically.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from reformer_retrieval.atomic import atomic_path, atomic_write_text
from reformer_retrieval.config import ReformerConfig
from reformer_retrieval.tokenizer import ByteTokenizer

__all__ = ["ModelDirectoryError", "load_model", "load_tokenizer", "read_training", "save_model"]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
TRAINING_FILE = "training.json"


class ModelDirectoryError(FileNotFoundError):
    """A model directory is missing a file or holds weights that do not fit its config."""


def save_model(
    model: Any, directory: str | Path, tokenizer: ByteTokenizer | None = None, training: dict[str, Any] | None = None
) -> Path:
    """Save ``model`` (a `ReformerEncoder`) into ``directory``; returns the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    model_id = model.model_id
    with atomic_path(directory / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "model_id": model_id})
    tokenizer = tokenizer or ByteTokenizer(max_len=model.config.max_len)
    if tokenizer.vocab_size != model.config.vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.vocab_size} ids, model vocab_size is {model.config.vocab_size}")
    tokenizer.save(directory)
    if training is not None:
        atomic_write_text(directory / TRAINING_FILE, json.dumps(training, indent=2, sort_keys=True))
    # config.json last: a directory with a config is a complete one.
    atomic_write_text(directory / CONFIG_FILE, model.config.to_json())
    return directory


def load_model(directory: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """Load a `ReformerEncoder` from ``directory`` (in eval mode)."""
    from reformer_retrieval.model.encoder import ReformerEncoder

    directory = Path(directory)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (directory / name).is_file():
            raise ModelDirectoryError(f"model directory {directory} has no {name}")
    config = ReformerConfig.from_json(directory / CONFIG_FILE)
    model = ReformerEncoder(config)
    state = load_file(str(directory / WEIGHTS_FILE), device=str(map_location))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelDirectoryError(f"weights in {directory / WEIGHTS_FILE} do not fit its config: {exc}") from exc
    return model.to(map_location).eval()


def load_tokenizer(directory: str | Path) -> ByteTokenizer:
    """The tokenizer saved with a model: a `ByteTokenizer`, or a `BPETokenizer` when ``tokenizer.json`` says
    ``"kind": "bpe"`` (the default `ByteTokenizer` if none was saved)."""
    path = Path(directory) / "tokenizer.json"
    if path.is_file() and json.loads(path.read_text(encoding="utf-8")).get("kind") == "bpe":
        from reformer_retrieval.tokenizer_bpe import BPETokenizer

        return BPETokenizer.load(directory)
    return ByteTokenizer.load(directory)


def read_training(directory: str | Path) -> dict[str, Any]:
    """The ``training.json`` record of a model directory ({} if absent)."""
    path = Path(directory) / TRAINING_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
