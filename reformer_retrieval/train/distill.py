"""Distil the contextual channel from a teacher: the Reformer learns what all-MiniLM-L6-v2 sees in each window.

Contrastive training on document pairs left the contextual channel at the language and style of a text (best F1
0.40 on the Wikipedia-revisions dev set, where the MiniLM chunk-mean baseline scores near 0.99). Distillation
gives the channel a dense target instead: every ``width``-byte window of a training crop has a teacher vector
(`reformer_retrieval.train.teacher`), and the student's vector of the same window (``context_window`` pooling,
`ReformerEncoder.window_vectors`) is pulled to it by

* a cosine loss per window, ``1 - cos(student, teacher)``,
* an InfoNCE loss over the windows of the batch (each student window must pick its own teacher window among the
  others), which keeps windows of different texts apart, and
* a cosine loss between the crop's pooled channel and the mean of its teacher windows (the document level).

The student reads a noised copy of each window with probability ``noise_prob`` (the teacher read the clean
text), so the channel learns to see through OCR errors and typos. Runs are time-budgeted, checkpoint every
``checkpoint_seconds`` (model, optimizer and state: safetensors + JSON) and resume where they stopped. They run on
``device`` (CPU by default; on CUDA optionally under bf16 autocast, the losses still in float32); checkpoints are
written from CPU copies of the weights, so a GPU run's model loads anywhere.

    python -m reformer_retrieval.train.distill --config configs/distill_stage.json --out runs/distill [--resume]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from reformer_retrieval.atomic import atomic_write_text
from reformer_retrieval.checkpoint import load_model, load_tokenizer
from reformer_retrieval.encode import resolve_device
from reformer_retrieval.model.encoder import ReformerEncoder
from reformer_retrieval.train.augment import augment
from reformer_retrieval.train.config import settings_from_json
from reformer_retrieval.train.optim import adamw
from reformer_retrieval.train.precision import CUDA_ONLY, bf16_autocast
from reformer_retrieval.train.schedule import warmup_cosine_lr
from reformer_retrieval.train.state import latest_checkpoint, load_optimizer_state, save_checkpoint
from reformer_retrieval.train.teacher import pad_window_rows, read_teacher_cache, window_texts

__all__ = ["DistillConfig", "distil", "distillation_loss", "fit_projection", "student_from"]


@dataclass(frozen=True)
class DistillConfig:
    """Settings of a distillation run (JSON: ``--config FILE``).

    Attributes:
        teacher_cache: Directory written by `reformer_retrieval.train.teacher.build_teacher_cache`.
        init_from: Model directory the student starts from (``None``: the bundled default model). Every weight
            is kept except the contextual projection when its width changes.
        context_dim: Width of the student's contextual channel (the teacher's 384 lets the channel's cosine be
            compared with the teacher's directly).
        context_window: Window width of the student's pooling, in tokens (the teacher's window in bytes).
        steps: Optimizer steps of the learning-rate schedule (with ``fit_steps_to_time``: the most it may be).
        max_minutes: Wall-clock budget of this run (a resumed run gets it again).
        batch_crops: Crops per step.
        lr, warmup, min_lr_ratio, weight_decay, grad_clip: AdamW with linear warm-up and cosine decay.
        temperature: InfoNCE temperature.
        nce_weight, doc_weight: Weights of the InfoNCE and document-level losses (the window cosine weighs 1).
        noise_prob: Probability that the student reads a noised copy of a crop.
        noise_preset, noise_strength: `augment` preset and the largest strength (each crop draws one in [0, max]).
        holdout_crops: Crops of the cache kept out of training to report the loss on.
        checkpoint_seconds: Save a checkpoint at least this often.
        warm_start: Before the first step, set the contextual projection by `fit_projection` on the training
            crops (a new projection otherwise starts random, and the first hundred steps went to undoing that).
        reload_cache: Re-read the teacher cache at every checkpoint (train on a cache that is still being built;
            the holdout crops, the first ones of the plan, stay the same).
        seed: Seed of everything random in the run.
        device: Where the student trains: ``"cpu"``, ``"cuda"`` / ``"cuda:N"``, or ``"auto"`` (CUDA when
            available, else CPU). Batches are made on the CPU and moved there.
        bf16: On CUDA, run the Reformer's forward pass under bfloat16 autocast (the model keeps its LSH
            rotations and bucket decisions in float32; window pooling and the losses stay float32). Ignored on
            the CPU.
        fit_steps_to_time: When > 0, time this many steps (after 5 warm-up steps of the kernels) and then set the
            schedule's length to the steps that fit in 90% of what is left of ``max_minutes`` at that speed (at
            most ``steps``), so the learning rate decays by the end of the budget on any machine. The length is kept in
            the checkpoints: a resumed run does not refit it. 0: the schedule is ``steps`` long.
    """

    teacher_cache: str
    init_from: str | None = None
    context_dim: int = 384
    context_window: int = 1024
    steps: int = 2000
    max_minutes: float = 60.0
    batch_crops: int = 8
    lr: float = 5e-4
    warmup: float = 0.05
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    temperature: float = 0.05
    nce_weight: float = 1.0
    doc_weight: float = 1.0
    noise_prob: float = 0.5
    noise_preset: str = "ocr"
    noise_strength: float = 0.6
    holdout_crops: int = 64
    checkpoint_seconds: float = 120.0
    reload_cache: bool = False
    warm_start: bool = False
    seed: int = 0
    device: str = "cpu"
    bf16: bool = False
    fit_steps_to_time: int = 0

    @classmethod
    def from_json(cls, path: str | Path) -> DistillConfig:
        return settings_from_json(cls, path, "distillation")


def student_from(directory: str | Path | None, context_dim: int, context_window: int) -> ReformerEncoder:
    """The model of ``directory`` (default: bundled) with a ``context_dim``-wide contextual channel pooled over
    ``context_window``-token windows; every other weight kept (the projection too when its width is unchanged)."""
    from reformer_retrieval.encode import DEFAULT_MODEL_DIR

    source = load_model(DEFAULT_MODEL_DIR if directory is None else directory)
    cfg = source.config
    lexical = cfg.ngram_dim if cfg.ngram_size else 0
    config = cfg.replace(embedding_dim=context_dim + lexical, context_window=context_window)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        student = ReformerEncoder(config)
    state = source.state_dict()
    if context_dim != cfg.context_dim:
        state = {k: v for k, v in state.items() if not k.startswith("projection.")}
    missing, unexpected = student.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("projection.") for k in missing):
        raise ValueError(f"the student does not fit {directory}: missing {missing}, unexpected {unexpected}")
    return student


@torch.no_grad()
def fit_projection(
    model: ReformerEncoder, crops: list[bytes], teachers: list[np.ndarray], tokenizer: Any, width: int,
    ridge: float = 1e-3, batch_crops: int = 8, show_progress: bool = False,
) -> dict[str, float]:
    """Set the contextual projection to the ridge-regression map from window-mean token states to the teacher's
    window vectors (clean text, the model's other weights fixed): the best linear read-out of what the Reformer
    already computes, a warm start for `distil` and a measure of how much of the teacher's signal the states hold.

    Returns:
        ``{"windows", "r2", "cosine"}``: windows fitted, the fit's R^2, and the mean cosine of the fitted
        (normalised) window vectors to the teacher's.
    """
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    means, targets = [], []
    config = DistillConfig(teacher_cache="", noise_prob=0.0)
    rng = np.random.default_rng(0)
    for first in tqdm(range(0, len(crops), batch_crops), desc="window states", disable=not show_progress):
        rows = np.arange(first, min(len(crops), first + batch_crops))
        ids, mask, windows, target, present = _batch(crops, teachers, rows, tokenizer, width, config, rng)
        ids, mask, windows = ids.to(device), mask.to(device), windows.to(device)
        states = model._contextual(ids, mask, None)[1].float()
        window_means, has_text = model.window_means(states, mask, windows)
        window_means, has_text = window_means.cpu(), has_text.cpu()
        n = min(window_means.shape[1], target.shape[1])
        both = present[:, :n] & has_text[:, :n]
        means.extend(window_means[:, :n][both].numpy())
        targets.extend(target[:, :n][both].numpy())
    x = np.stack(means).astype(np.float64)
    y = np.stack(targets).astype(np.float64)
    x_mean, y_mean = x.mean(0), y.mean(0)
    xc, yc = x - x_mean, y - y_mean
    gram = xc.T @ xc + ridge * len(x) * np.eye(x.shape[1])
    weight = np.linalg.solve(gram, xc.T @ yc)  # (in, out)
    bias = y_mean - x_mean @ weight
    pred = x @ weight + bias
    r2 = 1.0 - ((y - pred) ** 2).sum() / ((y - y_mean) ** 2).sum()
    unit = pred / np.maximum(np.linalg.norm(pred, axis=1, keepdims=True), 1e-12)
    model.projection.weight.copy_(torch.from_numpy(weight.T).to(model.projection.weight))
    model.projection.bias.copy_(torch.from_numpy(bias).to(model.projection.bias))
    model.train(was_training)
    y_unit = y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)
    return {"windows": float(len(x)), "r2": float(r2), "cosine": float((unit * y_unit).sum(1).mean())}


def _lr_at(config: DistillConfig, step: int, steps: int) -> float:
    """Learning rate of ``step`` in a schedule of ``steps`` (``config.steps``, or the length fitted to the time)."""
    return warmup_cosine_lr(step, steps, config.lr, config.warmup, config.min_lr_ratio)


_KERNEL_WARMUP_STEPS = 5
"""Steps left out of the speed measured by ``fit_steps_to_time`` (first calls: allocation, kernel choice)."""


def _batch(
    crops: list[bytes], teachers: list[np.ndarray], rows: np.ndarray, tokenizer: Any, width: int,
    config: DistillConfig, rng: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token ids, mask, window of every position, teacher vectors (batch, windows, 384) and their presence."""
    seqs, wins = [], []
    for row in rows:
        pieces = window_texts(crops[row], width)
        noisy = rng.random() < config.noise_prob
        ids, win = [], []
        for k, piece in enumerate(pieces):
            if noisy:
                piece = augment(piece, float(rng.uniform(0.1, config.noise_strength)),
                                seed=(config.seed, int(rng.integers(1 << 31))), preset=config.noise_preset)
            tokens = tokenizer.encode(piece, width * 2)[0]
            ids.append(tokens)
            win.append(np.full(len(tokens), k, dtype=np.int64))
        seqs.append(np.concatenate(ids) if ids else np.zeros(0, np.int64))
        wins.append(np.concatenate(win) if win else np.zeros(0, np.int64))
    ids, mask, windows = pad_window_rows(list(zip(seqs, wins)), tokenizer.pad_token_id)
    n_windows = max(len(teachers[r]) for r in rows)
    targets = np.zeros((len(rows), n_windows, teachers[rows[0]].shape[1]), dtype=np.float32)
    present = np.zeros((len(rows), n_windows), dtype=bool)
    for i, row in enumerate(rows):
        targets[i, : len(teachers[row])] = teachers[row]
        present[i, : len(teachers[row])] = True
    return (torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(windows), torch.from_numpy(targets),
            torch.from_numpy(present))


def distillation_loss(
    model: ReformerEncoder, batch: tuple[torch.Tensor, ...], config: DistillConfig
) -> tuple[torch.Tensor, dict[str, float]]:
    """The three losses of the module doc on one batch, summed with their weights, and each alone.

    The batch (as `_batch` makes it, on any device) is moved to the model's device; with ``config.bf16`` on
    CUDA the Reformer's forward pass runs under bf16 autocast, the window pooling and the losses in float32.
    """
    device = next(model.parameters()).device
    ids, mask, windows, targets, present = (t.to(device, non_blocking=True) for t in batch)
    with bf16_autocast(device, config.bf16, CUDA_ONLY):
        states = model._contextual(ids, mask, None)[1]
    vectors, has_text = model.window_vectors(states.float(), mask, windows)
    n = min(vectors.shape[1], targets.shape[1])
    vectors, targets = vectors[:, :n], targets[:, :n]
    both = present[:, :n] & has_text[:, :n]
    student, teacher = vectors[both], targets[both]
    cosine = (1.0 - (student * teacher).sum(-1)).mean()
    logits = student @ teacher.T / config.temperature
    nce = F.cross_entropy(logits, torch.arange(len(student), device=device))
    doc_s = F.normalize((vectors * both.unsqueeze(-1)).sum(1), dim=-1)
    doc_t = F.normalize((targets * both.unsqueeze(-1)).sum(1), dim=-1)
    doc = (1.0 - (doc_s * doc_t).sum(-1)).mean()
    total = cosine + config.nce_weight * nce + config.doc_weight * doc
    return total, {"cosine": cosine.item(), "nce": nce.item(), "doc": doc.item()}


def distil(config: DistillConfig, out: str | Path, resume: bool = False, log: Any = print) -> Path:
    """Run (or resume) a distillation; returns the directory of the final model (``out/model``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "distill_config.json"
    if config_path.exists() and not resume:
        raise FileExistsError(f"{out} holds a run already: pass --resume to continue it, or a new --out")
    atomic_write_text(config_path, json.dumps(asdict(config), indent=2, sort_keys=True))
    plan, crops, teachers = read_teacher_cache(config.teacher_cache)
    if teachers and teachers[0].shape[1] != config.context_dim:
        raise ValueError(f"context_dim={config.context_dim}: must equal the teacher's width {teachers[0].shape[1]}")
    if len(crops) <= config.holdout_crops + config.batch_crops:
        raise ValueError(f"{config.teacher_cache}: {len(crops)} crops are too few (holdout {config.holdout_crops})")
    torch.manual_seed(config.seed)
    tokenizer = load_tokenizer(config.init_from) if config.init_from else None
    if tokenizer is None:
        from reformer_retrieval.encode import DEFAULT_MODEL_DIR

        tokenizer = load_tokenizer(DEFAULT_MODEL_DIR)
    device = resolve_device(config.device)
    model = student_from(config.init_from, config.context_dim, config.context_window).to(device)
    log(f"student on {device}{' (bf16 autocast)' if config.bf16 and device.type == 'cuda' else ''}")
    optimizer = adamw(model, config.lr, config.weight_decay)
    step, history = 0, []
    planned, fitted = config.steps, config.fit_steps_to_time <= 0
    found = latest_checkpoint(out) if resume else None
    if found is not None:
        step, directory = found
        model.load_state_dict(load_model(directory).state_dict())
        load_optimizer_state(optimizer, directory)
        state = json.loads((directory / "trainer_state.json").read_text())
        history = state["history"]
        if config.fit_steps_to_time > 0 and state.get("steps_fitted"):  # keep the length fitted before
            planned, fitted = int(state["steps_planned"]), True
        log(f"resumed at step {step} from {directory}")
    holdout = np.arange(config.holdout_crops)
    train_rows = np.arange(config.holdout_crops, len(crops))
    if config.warm_start and found is None:
        fit = fit_projection(model, [crops[r] for r in train_rows], [teachers[r] for r in train_rows], tokenizer,
                             plan.width, batch_crops=config.batch_crops)
        log(f"warm start: projection fitted to {fit['windows']:.0f} windows (R^2 {fit['r2']:.3f})")
    started = last_save = time.monotonic()
    model.train()

    def save() -> None:
        save_checkpoint(out, step, model, tokenizer, optimizer, {"history": history, "config": asdict(config),
                                                                 "steps_planned": planned, "steps_fitted": fitted})

    def holdout_loss() -> dict[str, float]:
        model.eval()
        rng = np.random.default_rng(config.seed + 1)
        parts: list[dict[str, float]] = []
        with torch.no_grad():
            for first in range(0, len(holdout), config.batch_crops):
                rows = holdout[first : first + config.batch_crops]
                parts.append(distillation_loss(model, _batch(crops, teachers, rows, tokenizer, plan.width, config, rng),
                                               config)[1])
        model.train()
        return {k: float(np.mean([p[k] for p in parts])) for k in parts[0]}

    if step == 0:
        history.append({"step": 0, "holdout": holdout_loss(), "seconds": 0.0})
        log(f"step 0 holdout {history[-1]['holdout']}")
    budget = config.max_minutes * 60
    timed_from, timed_at = step + _KERNEL_WARMUP_STEPS, 0.0
    while step < planned and time.monotonic() - started < budget:
        rng = np.random.default_rng([config.seed, step])
        rows = rng.choice(train_rows, size=config.batch_crops, replace=False)
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(config, step, planned)
        loss, parts = distillation_loss(model, _batch(crops, teachers, rows, tokenizer, plan.width, config, rng), config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        step += 1
        if step == timed_from:
            timed_at = time.monotonic()
        if not fitted and step == timed_from + config.fit_steps_to_time:
            now = time.monotonic()
            per_step = (now - timed_at) / config.fit_steps_to_time
            # 90% of what is left at that speed: holdout losses and checkpoints take their time too
            planned = min(config.steps, step + max(0, int(0.9 * (budget - (now - started)) / per_step)))
            fitted = True
            log(f"step {step}: {per_step:.3f} s a step, the schedule is now {planned} steps long")
        if step % 10 == 0:
            log(f"step {step} loss {loss.item():.4f} {parts} lr {_lr_at(config, step, planned):.2e} "
                f"{time.monotonic() - started:.0f} s")
        if time.monotonic() - last_save >= config.checkpoint_seconds:
            history.append({"step": step, "holdout": holdout_loss(), "seconds": time.monotonic() - started})
            log(f"step {step} holdout {history[-1]['holdout']}")
            save()
            last_save = time.monotonic()
            if config.reload_cache:  # a cache still being built: train on the shards finished since
                plan, crops, teachers = read_teacher_cache(config.teacher_cache)
                train_rows = np.arange(config.holdout_crops, len(crops))
    history.append({"step": step, "holdout": holdout_loss(), "seconds": time.monotonic() - started})
    log(f"step {step} holdout {history[-1]['holdout']}")
    save()
    model.eval()
    final = out / "model"
    record = {"stage": "distill", "channels": model.channel_record(), "config": asdict(config), "steps_done": step,
              "steps_planned": planned, "device": str(device), "crops": len(crops),
              "teacher_plan": asdict(plan), "history": history}
    model.save_pretrained(final, tokenizer=tokenizer, training=record)
    return final


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True, help="DistillConfig JSON")
    parser.add_argument("--out", type=Path, required=True, help="run directory")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    final = distil(DistillConfig.from_json(args.config), args.out, resume=args.resume,
                   log=lambda line: print(line, flush=True))
    print(f"wrote {final}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
