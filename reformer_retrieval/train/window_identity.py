"""Window-identity training of the contextual channel: every window must find its own copy among its neighbours.

Contrastive training on document pairs (`reformer_retrieval.train.trainer`) taught the contextual channel what
tells two random documents apart, which is mostly their language and style: in-batch negatives from a
multilingual corpus are easy. Near-duplicate detection needs what tells two texts of one style apart, their
content. Here the negatives are mostly hard ones:

* a batch holds ``batch_crops`` crops of ``windows`` x ``width`` bytes, ``crops_per_doc`` of them from each
  document (so most other windows of the batch share the document's language, topic and boilerplate);
* each crop has a second view: the same bytes shifted by up to ``max_shift`` (so window edges never line up, as
  in two revisions of a text), each window noised with probability ``noise_prob`` (an `augment` preset; the
  first view is noised with ``noise_prob_first``);
* every window of the first view must pick its own window of the second view among all of the batch's windows
  (symmetric InfoNCE, `info_nce`), and every crop's pooled vector its own crop (the document level, weight
  ``doc_weight``).

The model reads each view whole (a crop's windows see each other through the attention layers) and its vectors
are those of `ReformerEncoder.window_vectors`, the pooling `Encoder` uses at ``context_window`` = ``width``, so
what is trained is exactly what a document's contextual channel averages. Runs are time-budgeted, checkpoint
every ``checkpoint_seconds`` (safetensors + JSON), and resume exactly where they stopped: each step's batch is
drawn from a generator seeded by ``(seed, step)``. On a CPU with bfloat16 matrix units (AMX) or a GPU, ``bf16``
runs the forward pass under bfloat16 autocast (LSH rotations and bucket decisions stay float32).

    python -m reformer_retrieval.train.window_identity --config configs/window_identity.json --out runs/wid [--resume]
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
from safetensors.torch import load_file

from reformer_retrieval.atomic import atomic_write_text
from reformer_retrieval.checkpoint import load_model, load_tokenizer
from reformer_retrieval.encode import resolve_device
from reformer_retrieval.model.encoder import ReformerEncoder
from reformer_retrieval.train.augment import augment
from reformer_retrieval.train.config import settings_from_json
from reformer_retrieval.train.loss import info_nce
from reformer_retrieval.train.optim import adamw
from reformer_retrieval.train.precision import CPU_AND_CUDA, bf16_autocast
from reformer_retrieval.train.schedule import warmup_cosine_lr
from reformer_retrieval.train.state import latest_checkpoint, load_optimizer_state, save_checkpoint
from reformer_retrieval.train.teacher import pad_window_rows, read_corpus_texts, window_texts

__all__ = [
    "ViewBatch",
    "WindowIdentityConfig",
    "make_batch",
    "sample_crops",
    "train_window_identity",
    "window_identity_loss",
]

QUEUE_FILE = "window_queue.safetensors"
"""The memory queue's vectors, saved beside each checkpoint."""


@dataclass(frozen=True)
class WindowIdentityConfig:
    """Settings of a window-identity run (JSON: ``--config FILE``).

    Attributes:
        corpus: Training corpus: a file, folder or glob of Parquet / JSONL / CSV (``id``, ``text`` columns).
        init_from: Model directory to start from (``None``: the bundled default model). The model's
            ``context_window`` is set to ``width``.
        width: Window width in bytes of normalised text (one byte is one token of the byte tokenizer).
        windows: Windows per crop.
        crops_per_doc: Crops drawn from each sampled document (hard negatives of each other).
        batch_crops: Crops per step (a multiple of ``crops_per_doc``).
        max_shift: The second view starts up to this many bytes before or after the first.
        second_view: ``"shift"``: the second view is the first shifted by up to ``max_shift`` (window identity);
            ``"elsewhere"``: an independent crop of the same document (independent cropping, as Contriever
            trains retrievers without labels: what two parts of one document share is its subject, names and
            terms, not its text). With ``"elsewhere"`` the crops of one document are each other's positives at
            the crop level, and ``window_weight`` should be 0 (the windows of the two views are different text).
        window_weight: Weight of the window-level InfoNCE.
        noise_prob, noise_prob_first: Probability that a window of the second / first view is noised.
        noise_preset, noise_strength: `augment` preset and the largest strength (each window draws one in
            [0.1, max]).
        steps: Optimizer steps of the learning-rate schedule.
        max_minutes: Wall-clock budget of this invocation (a resumed run gets it again).
        lr, warmup, min_lr_ratio, weight_decay, grad_clip: AdamW with linear warm-up and cosine decay.
        temperature: InfoNCE temperature.
        doc_weight: Weight of the crop-level InfoNCE (the window level weighs 1).
        queue_windows: Second-view window vectors of earlier steps kept as extra negatives of the window level
            (a memory queue, detached; 0: the batch's windows only). A batch holds about 50 windows, too few to
            force the resolution that telling thousands of windows of one style apart needs. The queue is saved
            with every checkpoint, so a resumed run is the run that was not stopped.
        holdout_docs: Documents (of a seeded order) kept out of training; the holdout loss and window accuracy
            are measured on fixed batches of them at every checkpoint.
        checkpoint_seconds: Save a checkpoint at least this often.
        seed: Seed of everything random in the run.
        device: ``"cpu"``, ``"cuda"`` / ``"cuda:N"`` or ``"auto"``.
        bf16: Run the forward pass under bfloat16 autocast, on the CPU as on CUDA (pooling and losses stay
            float32). Worth it on CPUs with bfloat16 matrix units (AMX): a step of the default model's shape ran
            1.15x faster on this project's CPUs; elsewhere bf16 is emulated and slower, hence off by default.
    """

    corpus: str
    init_from: str | None = None
    width: int = 1024
    windows: int = 4
    crops_per_doc: int = 3
    batch_crops: int = 12
    max_shift: int = 256
    second_view: str = "shift"
    window_weight: float = 1.0
    noise_prob: float = 0.7
    noise_prob_first: float = 0.3
    noise_preset: str = "ocr"
    noise_strength: float = 0.6
    steps: int = 2000
    max_minutes: float = 60.0
    lr: float = 3e-4
    warmup: float = 0.02
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    temperature: float = 0.05
    doc_weight: float = 1.0
    queue_windows: int = 0
    holdout_docs: int = 48
    checkpoint_seconds: float = 600.0
    seed: int = 0
    device: str = "cpu"
    bf16: bool = False

    def __post_init__(self) -> None:
        if self.batch_crops % self.crops_per_doc:
            raise ValueError(f"batch_crops={self.batch_crops} must be a multiple of crops_per_doc={self.crops_per_doc}")
        if not 0 <= self.max_shift < self.width:
            raise ValueError(f"max_shift={self.max_shift} must be in [0, width={self.width})")
        if self.second_view not in ("shift", "elsewhere"):
            raise ValueError(f"second_view must be 'shift' or 'elsewhere', got {self.second_view!r}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")

    @property
    def span(self) -> int:
        """Bytes a document needs to give a crop and its shifted view."""
        return self.windows * self.width + 2 * self.max_shift

    @classmethod
    def from_json(cls, path: str | Path) -> WindowIdentityConfig:
        return settings_from_json(cls, path, "window-identity")


@dataclass(frozen=True)
class ViewBatch:
    """Two views of ``n`` crops as model input: rows ``2i`` and ``2i + 1`` are crop ``i``'s first and second view.

    Attributes:
        ids: (2n, length) token ids, padded.
        mask: (2n, length) bool, True at real tokens.
        windows: (2n, length) long, the window (0 .. windows - 1) of every position.
    """

    ids: torch.Tensor
    mask: torch.Tensor
    windows: torch.Tensor


def sample_crops(
    data: list[bytes], docs: np.ndarray, config: WindowIdentityConfig, rng: np.random.Generator
) -> list[tuple[bytes, bytes]]:
    """``batch_crops`` pairs ``(first view, second view)`` of raw bytes: ``crops_per_doc`` crops of each of
    ``batch_crops / crops_per_doc`` documents drawn from ``docs`` (indices into ``data``, each at least
    ``config.span`` bytes long); the second view is the first shifted by up to ``max_shift`` bytes, or (``second_view
    = "elsewhere"``) a crop starting anywhere in the same document."""
    size = config.windows * config.width
    pairs: list[tuple[bytes, bytes]] = []
    n_docs = config.batch_crops // config.crops_per_doc
    for doc in rng.choice(docs, size=n_docs, replace=len(docs) < 2 * config.batch_crops):
        text = data[int(doc)]
        for _ in range(config.crops_per_doc):
            start = int(rng.integers(config.max_shift, len(text) - size - config.max_shift + 1))
            if config.second_view == "elsewhere":
                other = int(rng.integers(0, len(text) - size + 1))
                pairs.append((text[start : start + size], text[other : other + size]))
                continue
            shift = int(rng.integers(-config.max_shift, config.max_shift + 1))
            pairs.append((text[start : start + size], text[start + shift : start + shift + size]))
    return pairs


def make_batch(
    pairs: list[tuple[bytes, bytes]], tokenizer: Any, config: WindowIdentityConfig, rng: np.random.Generator
) -> ViewBatch:
    """Token ids of both views of every pair, windows noised as the config says (each window alone, so a window's
    edits never move another window's text)."""
    rows: list[tuple[np.ndarray, np.ndarray]] = []
    for first, second in pairs:
        for data, prob in ((first, config.noise_prob_first), (second, config.noise_prob)):
            ids, wins = [], []
            for k, piece in enumerate(window_texts(data, config.width)):
                if prob > 0 and rng.random() < prob:
                    piece = augment(piece, float(rng.uniform(0.1, config.noise_strength)),
                                    seed=(config.seed, int(rng.integers(1 << 31))), preset=config.noise_preset)
                tokens = tokenizer.encode(piece, config.width * 2)[0]
                ids.append(tokens)
                wins.append(np.full(len(tokens), k, dtype=np.int64))
            rows.append((np.concatenate(ids), np.concatenate(wins)))
    ids, mask, windows = pad_window_rows(rows, tokenizer.pad_token_id)
    return ViewBatch(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(windows))


def window_identity_loss(
    model: ReformerEncoder, batch: ViewBatch, config: WindowIdentityConfig, queue: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
    """``window_weight`` x the window-level InfoNCE plus ``doc_weight`` x the crop-level one, ``{"window", "doc",
    "accuracy", "doc_accuracy"}`` (accuracy: share of first-view windows whose nearest second-view window of the
    batch is their own; doc_accuracy: share of crops whose nearest second-view crop comes from their document),
    and the batch's second-view window vectors (detached, for the queue).

    ``queue``: (Q, dim) window vectors of earlier steps, extra negatives of the first view's windows."""
    device = next(model.parameters()).device
    ids, mask, windows = (t.to(device) for t in (batch.ids, batch.mask, batch.windows))
    with bf16_autocast(device, config.bf16, CPU_AND_CUDA):
        states = model._contextual(ids, mask, None)[1]
    vectors, present = model.window_vectors(states.float(), mask, windows)
    n = min(vectors.shape[1], config.windows)
    first, second = vectors[0::2, :n], vectors[1::2, :n]
    both = present[0::2, :n] & present[1::2, :n]
    a, b = first[both], second[both]
    if not config.window_weight:
        window = a.new_zeros(())
    elif queue is None or not len(queue):
        window = info_nce(a, b, config.temperature)
    else:
        target = torch.arange(len(a), device=device)
        logits = a @ torch.cat([b, queue.to(device)]).T / config.temperature
        window = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(b @ a.T / config.temperature, target))
    doc_a = F.normalize((first * both.unsqueeze(-1)).sum(1), dim=-1)
    doc_b = F.normalize((second * both.unsqueeze(-1)).sum(1), dim=-1)
    owner = torch.arange(len(doc_a), device=device) // config.crops_per_doc  # each crop's document in the batch
    # crops of one document: negatives of each other for "shift" (hard ones), positives for "elsewhere"
    doc = info_nce(doc_a, doc_b, config.temperature, labels=owner if config.second_view == "elsewhere" else None)
    with torch.no_grad():
        accuracy = ((a @ b.T).argmax(1) == torch.arange(len(a), device=device)).float().mean().item()
        doc_accuracy = (owner[(doc_a @ doc_b.T).argmax(1)] == owner).float().mean().item()
    parts = {"window": window.item(), "doc": doc.item(), "accuracy": accuracy, "doc_accuracy": doc_accuracy}
    return config.window_weight * window + config.doc_weight * doc, parts, b.detach()


def _load_training_texts(config: WindowIdentityConfig, tokenizer: Any) -> tuple[list[bytes], np.ndarray, np.ndarray]:
    """Normalised bytes of every corpus document, and the seeded holdout / training document indices (documents
    shorter than ``config.span`` are left out of both)."""
    _, texts = read_corpus_texts(config.corpus)
    data = [tokenizer.normalize(t).encode("utf-8") for t in texts]
    usable = np.array([i for i, d in enumerate(data) if len(d) >= config.span], dtype=np.int64)
    if len(usable) <= config.holdout_docs:
        raise ValueError(f"{config.corpus}: {len(usable)} documents of >= {config.span} bytes are too few "
                         f"(holdout {config.holdout_docs})")
    order = np.random.default_rng([config.seed, 7]).permutation(usable)
    return data, order[: config.holdout_docs], order[config.holdout_docs :]


def train_window_identity(
    config: WindowIdentityConfig, out: str | Path, resume: bool = False, log: Any = print,
    stop_after: int | None = None,
) -> Path:
    """Run (or resume) a window-identity run; returns the directory of the final model (``out/model``).

    ``stop_after``: run at most this many steps in this invocation (then checkpoint and return, as when the time
    budget runs out); ``None``: until ``config.steps`` or ``config.max_minutes``."""
    from reformer_retrieval.encode import DEFAULT_MODEL_DIR

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "window_identity_config.json"
    if config_path.exists() and not resume:
        raise FileExistsError(f"{out} holds a run already: pass --resume to continue it, or a new --out")
    atomic_write_text(config_path, json.dumps(asdict(config), indent=2, sort_keys=True))
    source = config.init_from or DEFAULT_MODEL_DIR
    tokenizer = load_tokenizer(source)
    data, holdout, train_docs = _load_training_texts(config, tokenizer)
    device = resolve_device(config.device)
    base = load_model(source)
    model = ReformerEncoder(base.config.replace(context_window=config.width))
    model.load_state_dict(base.state_dict())
    model.to(device)
    log(f"{len(train_docs)} training documents, {len(holdout)} held out; model on {device}"
        f"{' (bf16 autocast)' if config.bf16 else ''}")
    optimizer = adamw(model, config.lr, config.weight_decay)
    step, history = 0, []
    queue = torch.zeros(0, model.config.context_dim, device=device)
    found = latest_checkpoint(out) if resume else None
    if found is not None:
        step, directory = found
        model.load_state_dict(load_model(directory).state_dict())
        load_optimizer_state(optimizer, directory)
        history = json.loads((directory / "trainer_state.json").read_text())["history"]
        if (directory / QUEUE_FILE).is_file():
            queue = load_file(str(directory / QUEUE_FILE))["queue"].to(device)
        log(f"resumed at step {step} from {directory}")

    def holdout_scores() -> dict[str, float]:
        model.eval()
        rng = np.random.default_rng([config.seed, 11])
        parts = []
        with torch.no_grad():
            for _ in range(4):
                pairs = sample_crops(data, holdout, config, rng)
                parts.append(window_identity_loss(model, make_batch(pairs, tokenizer, config, rng), config)[1])
        model.train()
        return {k: round(float(np.mean([p[k] for p in parts])), 4) for k in parts[0]}

    def save() -> None:
        save_checkpoint(out, step, model, tokenizer, optimizer, {"history": history, "config": asdict(config)},
                        extra_tensors={QUEUE_FILE: {"queue": queue}})

    if step == 0:
        history.append({"step": 0, "holdout": holdout_scores(), "seconds": 0.0})
        log(f"step 0 holdout {history[-1]['holdout']}")
    started = last_save = time.monotonic()
    model.train()
    last_step = config.steps if stop_after is None else min(config.steps, step + stop_after)
    while step < last_step and time.monotonic() - started < config.max_minutes * 60:
        rng = np.random.default_rng([config.seed, step])
        batch = make_batch(sample_crops(data, train_docs, config, rng), tokenizer, config, rng)
        for group in optimizer.param_groups:
            group["lr"] = warmup_cosine_lr(step, config.steps, config.lr, config.warmup, config.min_lr_ratio)
        loss, parts, seen = window_identity_loss(model, batch, config, queue if config.queue_windows else None)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        if config.queue_windows:
            queue = torch.cat([seen, queue])[: config.queue_windows]
        step += 1
        if step % 10 == 0:
            log(f"step {step} loss {loss.item():.4f} {parts} {time.monotonic() - started:.0f} s")
        if time.monotonic() - last_save >= config.checkpoint_seconds:
            history.append({"step": step, "holdout": holdout_scores(), "seconds": time.monotonic() - started})
            log(f"step {step} holdout {history[-1]['holdout']}")
            save()
            last_save = time.monotonic()
    if not history or history[-1]["step"] != step:
        history.append({"step": step, "holdout": holdout_scores(), "seconds": time.monotonic() - started})
        log(f"step {step} holdout {history[-1]['holdout']}")
    save()
    model.eval()
    final = out / "model"
    record = {"stage": "window_identity", "channels": model.channel_record(), "config": asdict(config),
              "steps_done": step, "device": str(device), "training_documents": len(train_docs),
              "history": history}
    model.save_pretrained(final, tokenizer=tokenizer, training=record)
    return final


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True, help="WindowIdentityConfig JSON")
    parser.add_argument("--out", type=Path, required=True, help="run directory")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--stop-after", type=int, default=None, help="run at most this many steps now")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    final = train_window_identity(WindowIdentityConfig.from_json(args.config), args.out, resume=args.resume,
                                  log=lambda line: print(line, flush=True), stop_after=args.stop_after)
    print(f"wrote {final}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
