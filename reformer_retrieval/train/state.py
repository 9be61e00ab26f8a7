"""Training checkpoints: model directory + optimizer state (safetensors) + trainer state (JSON); no pickle.

Layout under a run's output directory::

    checkpoints/step-000200/   config.json, model.safetensors, tokenizer.json   (the model at that step)
                               optimizer.safetensors, optimizer.json, trainer_state.json
    checkpoints/latest.json    {"step": 200, "dir": "step-000200"}

A checkpoint directory is written under a temporary name and renamed when complete, and ``latest.json`` is
replaced atomically afterwards, so a run killed at any moment leaves the previous checkpoint usable.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from reformer_retrieval.atomic import atomic_path, atomic_write_text
from reformer_retrieval.checkpoint import save_model

__all__ = ["CheckpointError", "latest_checkpoint", "load_optimizer_state", "optimizer_tensors", "save_checkpoint"]

CHECKPOINTS = "checkpoints"
LATEST = "latest.json"


class CheckpointError(RuntimeError):
    """A checkpoint is missing or does not fit the run."""


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into safetensors-ready tensors and JSON-ready metadata."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, entry in sd["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"state.{pid}.{key}"] = value.detach().to("cpu").contiguous()
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer_state(optimizer: torch.optim.Optimizer, directory: Path) -> None:
    """Load ``optimizer.safetensors`` + ``optimizer.json`` of a checkpoint into ``optimizer``."""
    tensors = load_file(str(directory / "optimizer.safetensors"))
    meta = json.loads((directory / "optimizer.json").read_text(encoding="utf-8"))
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = value
    for name, value in meta["scalars"].items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    try:
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"optimizer state in {directory} does not fit the model: {exc}") from exc


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: Any,
    tokenizer: Any,
    optimizer: torch.optim.Optimizer,
    trainer_state: dict[str, Any],
    keep: int = 1,
    extra_tensors: dict[str, dict[str, torch.Tensor]] | None = None,
) -> Path:
    """Write the checkpoint of ``step`` and point ``latest.json`` at it; keep the newest ``keep`` ones.

    ``extra_tensors``: more state of the run, ``{file name: {key: tensor}}``, each written as a safetensors file inside
    the checkpoint before it is made visible (so a checkpoint never exists without them)."""
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:06d}"
    final = root / name
    tmp = root / f".{name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    save_model(model, tmp, tokenizer=tokenizer)
    tensors, meta = optimizer_tensors(optimizer)
    with atomic_path(tmp / "optimizer.safetensors") as path:
        save_file(tensors, str(path))
    atomic_write_text(tmp / "optimizer.json", json.dumps(meta, indent=1, sort_keys=True))
    atomic_write_text(tmp / "trainer_state.json", json.dumps({**trainer_state, "step": step}, indent=2, sort_keys=True))
    for file_name, values in (extra_tensors or {}).items():
        save_file({k: v.detach().to("cpu").contiguous() for k, v in values.items()}, str(tmp / file_name))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_text(root / LATEST, json.dumps({"step": step, "dir": name}))
    older = sorted(p for p in root.glob("step-*") if p.is_dir() and p.name != name)
    for old in older[: max(0, len(older) - (keep - 1))]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> tuple[int, Path] | None:
    """``(step, directory)`` of the newest complete checkpoint of a run, or None if it has none."""
    pointer = Path(run_dir) / CHECKPOINTS / LATEST
    if not pointer.is_file():
        return None
    data = json.loads(pointer.read_text(encoding="utf-8"))
    directory = pointer.parent / data["dir"]
    for needed in ("config.json", "model.safetensors", "optimizer.safetensors", "trainer_state.json"):
        if not (directory / needed).is_file():
            raise CheckpointError(f"checkpoint {directory} is incomplete: no {needed}")
    return int(data["step"]), directory
