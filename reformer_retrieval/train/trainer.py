"""The training loop: two augmented views per document, symmetric InfoNCE, a length curriculum.

`train` is the front door (the ``reformer-retrieval train`` command calls it). A run writes into its output
directory:

* the model (``config.json``, ``model.safetensors``, ``tokenizer.json``, ``training.json``), refreshed at
  every checkpoint and at the end;
* ``train_config.json`` (the resolved `TrainConfig`), ``metrics.jsonl`` (one JSON line per logged step and
  per validation), ``checkpoints/`` (see `reformer_retrieval.train.state`).

Everything random is seeded from ``TrainConfig.seed``: the initial weights (drawn inside ``fork_rng``, so the
caller's global random state is untouched), the batches (a pure function of ``(seed, step)``) and dropout
(replayed per step and micro-batch). ``--resume`` therefore continues exactly where the checkpoint left off.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import platform
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reformer_retrieval import __version__
from reformer_retrieval.atomic import atomic_write_text
from reformer_retrieval.checkpoint import load_model, load_tokenizer, save_model
from reformer_retrieval.config import NGRAM_FIELDS
from reformer_retrieval.model.encoder import ReformerEncoder
from reformer_retrieval.model.ngram_hash import idf_log_weights
from reformer_retrieval.tokenizer import ByteTokenizer
from reformer_retrieval.train.config import RUNTIME_FIELDS, TrainConfig
from reformer_retrieval.train.data import (
    BatchBuilder,
    Corpus,
    CurriculumPhase,
    PairBatch,
    collate,
    phase_at,
    read_corpus,
    split_holdout,
)
from reformer_retrieval.train.loss import info_nce
from reformer_retrieval.train.metrics import embed_token_ids, pair_metrics, recall_at_1
from reformer_retrieval.train.precision import CUDA_ONLY, bf16_autocast
from reformer_retrieval.train.prefetch import Prefetcher, augment_one
from reformer_retrieval.train.schedule import warmup_cosine_lr
from reformer_retrieval.train.state import latest_checkpoint, load_optimizer_state, save_checkpoint

__all__ = ["TrainError", "Trainer", "train"]

_clock = time.monotonic  # what checkpoint_seconds is measured by (a test may replace it)

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "train_config.json"


class TrainError(RuntimeError):
    """A training run cannot start or continue (bad output directory, resume mismatch, ...)."""


# ------------------------------------------------------------------------------------------------ helpers
def _seed_of(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0] >> 1)


@contextlib.contextmanager
def _seeded_torch(seed: int, device: torch.device, active: bool) -> Iterator[None]:
    """Run the body with torch's global RNG seeded by ``seed``, restoring the caller's state afterwards."""
    if not active:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainError(f"device {name!r} requested but CUDA is not available")
    return device


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _file_record(path: Path) -> dict[str, Any]:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return {"name": path.name, "bytes": path.stat().st_size, "sha256": h.hexdigest()}


def _hardware(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


# ------------------------------------------------------------------------------------------------ trainer
class Trainer:
    """One training run (see the module docstring for what it writes).

    Args:
        config: The run's settings (None: the defaults, or on ``resume`` the run's own saved settings).
        corpus: Training corpus: a Parquet file or a directory of ``train-*.parquet`` shards.
        output_dir: Where the model, logs and checkpoints go.
        labelled: Optional labelled Parquet (id, text, cluster) for pair ROC-AUC during validation.
        resume: Continue from the newest checkpoint in ``output_dir``.
        command: The command line to record in ``training.json``.
        log: Callable for one-line messages (default: ``tqdm.write``).
    """

    def __init__(
        self,
        config: TrainConfig | None,
        corpus: str | Path,
        output_dir: str | Path,
        labelled: str | Path | None = None,
        resume: bool = False,
        command: str | None = None,
        log: Any = None,
    ) -> None:
        self.t0 = time.perf_counter()
        self.given_config = config
        self.config = config if config is not None else TrainConfig()
        self.corpus_path = Path(corpus)
        self.out = Path(output_dir)
        self.labelled_path = None if labelled is None else Path(labelled)
        self.resume = resume
        self.command = command if command is not None else " ".join(sys.argv)
        from tqdm.auto import tqdm

        self._tqdm = tqdm
        self.log = log if log is not None else tqdm.write
        self.adjustments: list[str] = []
        self.calibration: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []
        self.tokens_seen = 0
        self.train_seconds = 0.0
        self.step = 0
        self.step_time: dict[int, float] = {}
        self.eval_seconds = 0.0
        self.save_seconds = 1.0
        self.skipped_steps = 0
        self._pool: Any = None
        self.initial_model: dict[str, str] | None = None
        self._resume_dir: Path | None = None

    # ------------------------------------------------------------------ budget
    def elapsed(self) -> float:
        """Seconds since the run started."""
        return time.perf_counter() - self.t0

    @property
    def budget(self) -> float:
        """Wall-clock budget in seconds (infinite without ``max_minutes``)."""
        m = self.config.max_minutes
        return math.inf if m is None else 60.0 * m

    def _final_reserve(self) -> float:
        return self.eval_seconds + 2 * self.save_seconds + 0.5

    # ------------------------------------------------------------------ setup
    def _prepare_output(self) -> tuple[int, Path | None]:
        self.out.mkdir(parents=True, exist_ok=True)
        saved = self.out / CONFIG_FILE
        found = latest_checkpoint(self.out)
        if not self.resume:
            if saved.exists() or found is not None:
                raise TrainError(
                    f"{self.out} already holds a training run ({CONFIG_FILE}); pass --resume to continue it "
                    "or choose another output directory"
                )
            return 0, None
        if found is None or not saved.exists():
            raise TrainError(f"--resume: {self.out} holds no checkpoint to resume from")
        previous = TrainConfig.from_json(saved)
        if self.given_config is None:
            self.config = previous
            return found
        # steps / auto_steps / micro-batches may have been resolved by the run itself; compare the rest.
        ignore = RUNTIME_FIELDS | {"steps", "auto_steps", "curriculum"}
        mine = {k: v for k, v in self.given_config.to_dict().items() if k not in ignore}
        theirs = {k: v for k, v in previous.to_dict().items() if k not in ignore}
        phases = [(p.until, p.max_tokens, p.batch_size, p.position_offset_prob) for p in self.given_config.curriculum]
        if phases != [(p.until, p.max_tokens, p.batch_size, p.position_offset_prob) for p in previous.curriculum]:
            mine["curriculum"], theirs["curriculum"] = phases, None
        if mine != theirs:
            diff = sorted(k for k in mine if mine[k] != theirs.get(k))
            raise TrainError(f"--resume: the given config differs from the run's {saved} in {diff}")
        runtime = {k: getattr(self.given_config, k) for k in RUNTIME_FIELDS}
        self.config = previous.replace(**runtime)
        return found

    def _load_data(self) -> None:
        cfg = self.config
        self.corpus: Corpus = read_corpus(self.corpus_path, cfg.id_column, cfg.text_column, cfg.cluster_column)
        for file, doc_id, reason in self.corpus.skipped[:5]:
            self.log(f"skipped row id={doc_id!r} of {file}: {reason}")
        if len(self.corpus.skipped) > 5:
            self.log(f"skipped {len(self.corpus.skipped)} rows with a null or empty text in all")
        longest = max(cfg.eval_lengths)
        self.train_idx, self.val_idx = split_holdout(
            self.corpus.n_bytes, cfg.val_docs, cfg.seed, cfg.val_long_docs, longest
        )
        self.log(
            f"corpus {self.corpus_path}: {len(self.corpus)} documents ({int(self.corpus.n_bytes.sum()):,} bytes) "
            f"from {len(self.corpus.files)} file(s); {len(self.train_idx)} train, {len(self.val_idx)} held out"
        )

    def _build_model(self) -> None:
        cfg = self.config
        if cfg.init_from is not None:
            self._load_initial_model(Path(cfg.init_from))
            return
        model_config = cfg.model_config()
        self.tokenizer = self._make_tokenizer(model_config.max_len)
        if self.tokenizer.vocab_size != model_config.vocab_size:
            if "vocab_size" in cfg.model:
                raise TrainError(
                    f"model vocab_size {model_config.vocab_size} does not match the tokenizer's "
                    f"{self.tokenizer.vocab_size} (leave it out: it follows the tokenizer)"
                )
            model_config = model_config.replace(vocab_size=self.tokenizer.vocab_size)
        with _seeded_torch(_seed_of(cfg.seed, 1), torch.device("cpu"), True):
            self.model = ReformerEncoder(model_config)
        if self._resume_dir is None:  # a resumed run reads every weight from its checkpoint
            self._init_ngram_weights()

    def _make_tokenizer(self, max_len: int) -> ByteTokenizer:
        """The run's tokenizer: bytes, or a BPE vocabulary trained on a seeded sample of the training split
        (read back from the checkpoint when resuming, so a resumed run keeps its vocabulary)."""
        cfg = self.config
        settings = cfg.tokenizer_settings()
        if cfg.tokenizer_kind == "bytes":
            return ByteTokenizer(max_len=max_len, **settings)
        if self._resume_dir is not None:
            return load_tokenizer(self._resume_dir)
        from reformer_retrieval.tokenizer_bpe import train_bpe

        t = time.perf_counter()
        budget = cfg.bpe_train_bytes
        order = np.random.default_rng([cfg.seed, 0xB9E]).permutation(self.train_idx)
        sample: list[str] = []
        total = 0
        for i in order.tolist():
            text = self.corpus.texts[i][:50_000]  # many documents rather than a few long ones
            sample.append(text)
            total += len(text.encode("utf-8"))
            if total >= budget:
                break
        tok = train_bpe(sample, int(cfg.tokenizer["vocab_size"]), max_len=max_len, **settings)
        self.log(
            f"BPE vocabulary: {tok.vocab_size:,} ids trained on {len(sample)} documents ({total:,} bytes) in "
            f"{time.perf_counter() - t:.0f} s; {tok.bytes_per_token:.2f} bytes per token"
        )
        return tok

    def _load_initial_model(self, directory: Path) -> None:
        """Start from a saved model's weights (``init_from``), after checking the config agrees with it."""
        cfg = self.config
        try:
            self.model = load_model(directory, map_location="cpu")
            self.tokenizer = load_tokenizer(directory)
        except (OSError, ValueError, KeyError) as exc:
            raise TrainError(f"init_from {str(directory)!r}: cannot load a model there ({exc})") from exc
        self.initial_model = {"path": str(directory), "model_id": self.model.model_id}
        loaded = dataclasses.asdict(self.model.config)
        wanted = dataclasses.asdict(self.model.config.replace(**cfg.model))
        differ = sorted(k for k, v in wanted.items() if loaded[k] != v)
        regraft = bool(differ) and bool(wanted["ngram_size"]) and set(differ) <= {*NGRAM_FIELDS, "embedding_dim"}
        if regraft:
            need = self.model.config.context_dim + wanted["ngram_dim"]
            if wanted["embedding_dim"] != need:
                raise TrainError(
                    f"init_from {str(directory)!r}: to add or replace the n-gram channel, model.embedding_dim must "
                    f"be {need} (its contextual {self.model.config.context_dim} + ngram_dim {wanted['ngram_dim']})"
                )
        elif differ:
            raise TrainError(f"init_from {str(directory)!r}: its model differs from the config's in {differ}")
        # kind and normalisation must agree; the vocabulary itself is the loaded one (a BPE config's
        # vocab_size is the size asked of a new vocabulary, which a small corpus may not reach)
        given = {**ByteTokenizer(**cfg.tokenizer_settings()).to_dict(), "kind": cfg.tokenizer_kind}
        have = {**self.tokenizer.to_dict(), "kind": self.tokenizer.kind}
        differ_tok = sorted(k for k in given if k != "max_len" and given[k] != have.get(k))
        if differ_tok:
            raise TrainError(f"init_from {str(directory)!r}: its tokenizer differs from the config's in {differ_tok}")
        self.log(f"initial weights: model {self.initial_model['model_id']} from {directory}")
        if regraft and self._resume_dir is None:  # a resumed run reads the grafted model from its checkpoint
            self._graft_ngrams(directory, keep_channel=set(differ) == {"ngram_weight"})

    def _graft_ngrams(self, directory: Path, keep_channel: bool) -> None:
        """Give a loaded model the config's n-gram channel, keeping every contextual weight: add one to a model
        that has none (its embedding becomes the contextual channel) or replace its channel by one of another
        shape (its n-gram weights are dropped). The new channel's vectors start fresh (seeded) and its weights
        at the idf (`_init_ngram_weights`). With ``keep_channel`` (only ``ngram_weight`` changes) every loaded
        weight is kept."""
        cfg = self.config
        loaded = self.model
        with _seeded_torch(_seed_of(cfg.seed, 1), torch.device("cpu"), True):
            self.model = ReformerEncoder(loaded.config.replace(**cfg.model))
        state = loaded.state_dict()
        if not keep_channel:
            state = {k: v for k, v in state.items() if not k.startswith("ngrams.")}
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        if unexpected or any(not k.startswith("ngrams.") for k in missing) or (keep_channel and missing):
            raise TrainError(f"init_from {str(directory)!r}: cannot add n-grams (missing {missing}, extra {unexpected})")
        self.model.eval()
        if keep_channel:
            self.log(f"init_from: n-gram weight {self.model.config.ngram_weight:g} for model {loaded.model_id}")
            return
        verb = "replaced in" if loaded.ngrams is not None else "added to"
        self.log(f"init_from: hashed {self.model.config.ngram_size}-grams {verb} model {loaded.model_id}")
        self._init_ngram_weights()

    def _init_ngram_weights(self) -> None:
        """Start the n-gram pooling weights at idf ** ngram_idf_power over a seeded sample of training documents."""
        cfg = self.config
        ngrams = self.model.ngrams
        if ngrams is None:
            return
        t = time.perf_counter()
        order = np.random.default_rng([cfg.seed, 0x1DF]).permutation(self.train_idx)[: cfg.ngram_idf_docs]
        sequences = (self.tokenizer.encode(self.corpus.texts[i], cfg.ngram_idf_tokens)[0] for i in order.tolist())
        ngrams.set_log_weights(idf_log_weights(ngrams, sequences, cfg.ngram_idf_power))
        self.log(
            f"n-gram pooling weights: idf^{cfg.ngram_idf_power:g} over {len(order)} training documents "
            f"in {time.perf_counter() - t:.1f} s"
        )

    def _make_builder(self) -> BatchBuilder:
        cfg = self.config
        clusters = None
        if self.corpus.clusters is not None:
            _, codes = np.unique(np.asarray(self.corpus.clusters, dtype=object).astype(str), return_inverse=True)
            clusters = codes.astype(np.int64)
        return BatchBuilder(
            texts=self.corpus.texts,
            n_bytes=self.corpus.n_bytes,
            train_index=self.train_idx,
            curriculum=cfg.curriculum,
            total_steps=cfg.steps,
            tokenizer=self.tokenizer,
            policy=cfg.augment_policy(),
            seed=cfg.seed,
            max_len=self.model.config.max_len,
            pad_multiple=self.model.pad_multiple,
            strength=cfg.augment_strength,
            containment_prob=cfg.containment_prob,
            clusters=clusters,
            cluster_pair_prob=cfg.cluster_pair_prob,
            same_doc_negatives=cfg.same_doc_negatives,
        )

    def _make_val_sets(self) -> None:
        """Token ids of the held-out originals and their augmented copies, per evaluation length.

        Lengths up to ``eval_all_max_tokens`` use every held-out document; longer ones only the long
        documents (at least ``max(eval_lengths)`` bytes), which also form the ``_long`` metrics at every
        length, so those compare the same documents at 4K and at 64K.
        """
        cfg = self.config
        self.val_sets: dict[int, dict[str, Any]] = {}
        if len(self.val_idx) == 0:
            return
        longest = max(cfg.eval_lengths)
        val = self.val_idx.tolist()
        long_docs = {i for i in val if self.corpus.n_bytes[i] >= longest}
        for length in cfg.eval_lengths:
            docs = val if length <= cfg.eval_all_max_tokens else [i for i in val if i in long_docs]
            if not docs:
                continue
            texts = [self.corpus.texts[i][: length + 16] for i in docs]
            jobs = [(t, cfg.eval_preset, cfg.eval_strength, (cfg.seed, 0xE7A1, i)) for t, i in zip(texts, docs)]
            noisy = self._pool.starmap(augment_one, jobs) if self._pool is not None else [augment_one(*j) for j in jobs]
            originals, copies = [], []
            for text, changed in zip(texts, noisy):
                originals.append(self.tokenizer.encode(text, length)[0])
                ids = self.tokenizer.encode(changed, length)[0]
                copies.append(ids if len(ids) else originals[-1])
            self.val_sets[length] = {
                "originals": originals,
                "copies": copies,
                "all": length <= cfg.eval_all_max_tokens,
                "long_rows": [r for r, i in enumerate(docs) if i in long_docs],
            }

    def _load_labelled(self) -> None:
        cfg = self.config
        self.labelled: dict[str, Any] | None = None
        if self.labelled_path is None:
            return
        corpus = read_corpus(self.labelled_path, "id", "text", "cluster")
        labels = np.asarray(corpus.clusters)
        index = np.arange(len(corpus))
        if cfg.labelled_max_docs and len(corpus) > cfg.labelled_max_docs:
            rng = np.random.default_rng([cfg.seed, 0x1ABE1])
            chosen: list[int] = []
            for cluster in rng.permutation(np.unique(labels)):
                if len(chosen) >= cfg.labelled_max_docs:
                    break
                chosen.extend(np.flatnonzero(labels == cluster).tolist())
            index = np.sort(np.asarray(chosen))
        ids, truncated = [], 0
        for i in index.tolist():
            tok, total = self.tokenizer.encode(corpus.texts[i], cfg.labelled_max_tokens)
            truncated += int(total > cfg.labelled_max_tokens)
            ids.append(tok)
        self.labelled = {"ids": ids, "labels": labels[index], "truncated": truncated, "n_docs": len(index)}
        self.log(
            f"labelled set {self.labelled_path}: {len(index)} documents, {len(np.unique(labels[index]))} clusters, "
            f"{truncated} cut to {cfg.labelled_max_tokens} tokens"
        )

    def _make_optimizer(self) -> None:
        cfg = self.config
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            (no_decay if p.dim() < 2 or "embedding" in name or "norm" in name else decay).append(p)
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr,
            betas=cfg.betas,
            foreach=False,
        )

    def lr_at(self, step: int) -> float:
        """Learning rate of step ``step``: linear warm-up, then cosine decay to ``lr * min_lr_ratio``."""
        cfg = self.config
        return warmup_cosine_lr(step, cfg.steps, cfg.lr, cfg.warmup, cfg.min_lr_ratio)

    # ------------------------------------------------------------------ one step
    def _autocast(self) -> Any:
        return bf16_autocast(self.device, self.config.bf16, CUDA_ONLY)

    def _embed(self, views: Sequence[np.ndarray], offsets: np.ndarray, seed: int) -> torch.Tensor:
        ids, mask = collate(views, self.tokenizer.pad_token_id)
        ids, mask = ids.to(self.device, non_blocking=True), mask.to(self.device, non_blocking=True)
        positions = torch.as_tensor(offsets, dtype=torch.long, device=self.device) if offsets.any() else None
        with _seeded_torch(seed, self.device, self._dropout), self._autocast():
            return self.model(ids, mask, position_offsets=positions).float()

    def _forward_backward(self, batch: PairBatch, phase: CurriculumPhase) -> float:
        """Loss of one batch; gradients accumulated into the parameters."""
        cfg = self.config
        labels = torch.as_tensor(batch.labels, device=self.device)
        n = len(batch.views_a)
        fb = phase.forward_batch
        views = (batch.views_a, batch.views_b)
        offsets = (np.asarray(batch.offsets_a), np.asarray(batch.offsets_b))
        if fb >= n:
            ea = self._embed(views[0], offsets[0], _seed_of(cfg.seed, batch.step, 0, 0))
            eb = self._embed(views[1], offsets[1], _seed_of(cfg.seed, batch.step, 1, 0))
            loss = info_nce(ea, eb, cfg.temperature, labels)
            loss.backward()
            return float(loss.detach())
        # Gradient caching: embed every micro-batch without a graph, take the loss's gradient with respect to
        # the embeddings, then re-run each micro-batch with a graph and push that gradient through it.
        groups = []
        for v in range(2):
            order = np.argsort([len(x) for x in views[v]], kind="stable")
            groups.append([order[i : i + fb] for i in range(0, n, fb)])
        embs = []
        with torch.no_grad():
            for v in range(2):
                e = torch.zeros(n, self.model.config.embedding_dim, device=self.device)
                for m, rows in enumerate(groups[v]):
                    e[torch.as_tensor(rows, device=self.device)] = self._embed(
                        [views[v][r] for r in rows], offsets[v][rows], _seed_of(cfg.seed, batch.step, v, m)
                    )
                embs.append(e.requires_grad_(True))
        loss = info_nce(embs[0], embs[1], cfg.temperature, labels)
        loss.backward()
        for v in range(2):
            grad = embs[v].grad
            for m, rows in enumerate(groups[v]):
                idx = torch.as_tensor(rows, device=self.device)
                e = self._embed([views[v][r] for r in rows], offsets[v][rows], _seed_of(cfg.seed, batch.step, v, m))
                e.backward(grad[idx])
        return float(loss.detach())

    def _train_step(self, batch: PairBatch) -> tuple[float, float, bool]:
        """Forward, backward (retrying with smaller micro-batches on CUDA out-of-memory), clip, step.

        Returns ``(loss, gradient norm, applied)``; a step whose loss or gradient is not finite is skipped.
        """
        cfg = self.config
        while True:
            phase = cfg.curriculum[batch.phase]
            try:
                loss = self._forward_backward(batch, phase)
                break
            except RuntimeError as exc:
                if not _is_oom(exc) or phase.forward_batch <= 1:
                    raise
                self.optimizer.zero_grad(set_to_none=True)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                self._shrink_phase(batch.phase, f"out of memory at step {batch.step}")
        norm = torch.nn.utils.clip_grad_norm_(
            self.model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else math.inf
        )
        grad_norm = float(norm)
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            self.optimizer.zero_grad(set_to_none=True)  # skip the update; the model keeps its last good state
            return loss, grad_norm, False
        lr = self.lr_at(batch.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss, grad_norm, True

    def _shrink_phase(self, index: int, why: str) -> None:
        phase = self.config.curriculum[index]
        new = dataclasses.replace(phase, micro_batch=max(1, phase.forward_batch // 2))
        phases = list(self.config.curriculum)
        phases[index] = new
        self.config = self.config.replace(curriculum=tuple(phases))
        self.builder.curriculum = list(self.config.curriculum)
        msg = f"phase {index} ({phase.max_tokens} tokens): {why}; micro_batch {phase.forward_batch} -> {new.micro_batch}"
        self.adjustments.append(msg)
        self.log("adjusted " + msg)

    # ------------------------------------------------------------------ calibration
    def _synthetic_batch(self, phase_index: int, n_docs: int) -> PairBatch:
        phase = self.config.curriculum[phase_index]
        gen = np.random.default_rng([self.config.seed, 0xCA11B, phase_index])
        vocab = self.tokenizer.vocab_size  # random ids of the run's own vocabulary (bytes or BPE)
        views = [gen.integers(4, vocab, size=phase.max_tokens).astype(np.int32) for _ in range(n_docs)]
        room = self.model.config.max_len - phase.max_tokens
        shift = room // 2 if phase.position_offset_prob > 0 and room > 0 else 0
        offsets = np.full(n_docs, shift, dtype=np.int64)  # exercise the offset path if the phase uses it
        return PairBatch(0, phase_index, np.arange(n_docs), np.arange(n_docs), views, list(views), offsets, offsets)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def calibrate(self) -> dict[str, Any]:
        """Time one micro-batch of every phase at its full length (after a warm-up), shrinking micro-batches
        that run out of memory, and the batch building; returns the per-phase step-time estimates."""
        cfg = self.config
        rows = []
        for i in range(len(cfg.curriculum)):
            while True:
                phase = self.config.curriculum[i]
                fb = min(phase.forward_batch, phase.batch_size)
                try:
                    times = []
                    for _ in range(2):
                        self._sync()
                        t = time.perf_counter()
                        batch = self._synthetic_batch(i, fb)
                        self._forward_backward(batch, dataclasses.replace(phase, micro_batch=0))
                        self._sync()
                        times.append(time.perf_counter() - t)
                    nograd = 0.0
                    if phase.forward_batch < phase.batch_size:
                        self._sync()
                        t = time.perf_counter()
                        with torch.no_grad():
                            self._embed(batch.views_a, batch.offsets_a, 0)
                        self._sync()
                        nograd = time.perf_counter() - t
                    break
                except RuntimeError as exc:
                    self.optimizer.zero_grad(set_to_none=True)
                    if not _is_oom(exc) or phase.forward_batch <= 1:
                        raise
                    if self.device.type == "cuda":
                        torch.cuda.empty_cache()
                    self._shrink_phase(i, "out of memory in calibration")
            self.optimizer.zero_grad(set_to_none=True)
            n_micro = math.ceil(phase.batch_size / fb)
            gpu = times[-1] * n_micro + (2 * nograd * n_micro if n_micro > 1 else 0.0)
            first = math.floor(([0.0] + [p.until for p in cfg.curriculum])[i] * cfg.steps)
            self.builder.total_steps = cfg.steps
            t = time.perf_counter()
            self.builder.build(first)
            data = (time.perf_counter() - t) / max(1, cfg.num_workers)
            est = max(gpu, data)
            self.step_time[i] = est
            rows.append({"phase": i, "max_tokens": phase.max_tokens, "batch_size": phase.batch_size,
                         "forward_batch": phase.forward_batch, "compute_s": round(gpu, 4),
                         "data_s": round(data, 4), "step_s": round(est, 4)})
            self.log(
                f"calibrate phase {i}: {phase.max_tokens} tokens x {phase.batch_size} docs "
                f"(forward {phase.forward_batch}): compute {gpu:.3f} s, data {data:.3f} s per step"
            )
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return {"phases": rows}

    def _choose_steps(self) -> int:
        cfg = self.config
        fractions = np.diff([0.0] + [p.until for p in cfg.curriculum])
        per_step = float(sum(f * self.step_time[i] for i, f in enumerate(fractions)))
        available = self.budget - self.elapsed() - self._final_reserve()
        steps = cfg.steps
        for _ in range(3):  # evaluations and checkpoints depend on the number of steps
            n_evals = steps // cfg.eval_every if cfg.eval_every else 0
            n_ckpt = steps // cfg.checkpoint_every if cfg.checkpoint_every else 0
            if cfg.checkpoint_seconds:
                n_ckpt += int(available // (cfg.checkpoint_seconds + self.save_seconds))
            room = available - n_evals * self.eval_seconds - n_ckpt * self.save_seconds
            steps = max(1, min(cfg.steps, int(0.95 * room / per_step)))
        return steps

    # ------------------------------------------------------------------ validation
    def evaluate(self) -> dict[str, Any]:
        """Recall@1 of the held-out documents' augmented copies per length (among all held-out documents up
        to ``eval_all_max_tokens``, and among the long ones only at every length), and pair ROC-AUC / best
        F1 on the labelled set when given."""
        cfg = self.config
        t = time.perf_counter()
        result: dict[str, Any] = {"step": self.step}
        dtype = torch.bfloat16 if (self.device.type == "cuda" and cfg.bf16) else None
        for length, vs in self.val_sets.items():
            g = embed_token_ids(self.model, vs["originals"], self.device, cfg.eval_batch_tokens, dtype)
            q = embed_token_ids(self.model, vs["copies"], self.device, cfg.eval_batch_tokens, dtype)
            if vs["all"]:
                r_all = recall_at_1(q, g)
                result[f"recall@1/{length}"] = r_all["recall@1"]
                result[f"mrr/{length}"] = r_all["mrr"]
                result["n_val"] = r_all["n_queries"]
            rows = vs["long_rows"]
            if rows:
                r_long = recall_at_1(q[rows], g[rows])  # long documents among long documents only
                result[f"recall@1_long/{length}"] = r_long["recall@1"]
                result[f"mrr_long/{length}"] = r_long["mrr"]
                result["n_long"] = r_long["n_queries"]
        if self.labelled is not None:
            emb = embed_token_ids(self.model, self.labelled["ids"], self.device, cfg.eval_batch_tokens, dtype)
            pm = pair_metrics(emb @ emb.T, self.labelled["labels"])
            result["labelled_roc_auc"] = pm["roc_auc"]
            result["labelled_best_f1"] = pm["best_f1"]
            result["labelled_n_docs"] = self.labelled["n_docs"]
        self._sync()
        result["eval_seconds"] = round(time.perf_counter() - t, 3)
        self.eval_seconds = max(self.eval_seconds, result["eval_seconds"])
        return result

    def _estimate_eval_seconds(self) -> float:
        """Time of a full validation, extrapolated from embedding a few of its documents (used when no
        validation has been timed yet: ``eval_at_start`` off, or a resumed run)."""
        cfg = self.config
        dtype = torch.bfloat16 if (self.device.type == "cuda" and cfg.bf16) else None
        sets = [ids for vs in self.val_sets.values() for ids in (vs["originals"], vs["copies"])]
        if self.labelled is not None:
            sets.append(self.labelled["ids"])
        total = 0.0
        for ids in sets:
            sample = sorted(ids, key=len, reverse=True)[:2]  # the longest: a safe (high) estimate per token
            self._sync()
            t = time.perf_counter()
            embed_token_ids(self.model, sample, self.device, cfg.eval_batch_tokens, dtype)
            self._sync()
            per_token = (time.perf_counter() - t) / max(1, sum(len(x) for x in sample))
            total += per_token * sum(len(x) for x in ids)
        self.log(f"validation estimated at {total:.1f} s (reserved for the final one)")
        return total

    def _has_validation(self) -> bool:
        return bool(self.val_sets) or self.labelled is not None

    def _log_eval(self, result: dict[str, Any]) -> None:
        self.history.append(result)
        self._append_metrics({"kind": "eval", **result})
        shown = " ".join(
            f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items() if k != "step"
        )
        self.log(f"validation at step {result['step']}: {shown}")

    # ------------------------------------------------------------------ files
    def _append_metrics(self, record: dict[str, Any]) -> None:
        with open(self.out / METRICS_FILE, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")

    def _truncate_metrics(self, step: int) -> None:
        path = self.out / METRICS_FILE
        if not path.exists():
            return
        kept = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
        atomic_write_text(path, "".join(ln + "\n" for ln in kept))

    def training_record(self, status: str) -> dict[str, Any]:
        """The ``training.json`` content: command, data, steps, wall time, hardware, validation."""
        cfg = self.config
        return {
            "format": 1,
            "library_version": __version__,
            "model_id": self.model.model_id,
            "status": status,
            "command": self.command,
            "data": {
                "corpus": str(self.corpus_path),
                "files": self.file_records,
                "n_documents": len(self.corpus),
                "n_train": len(self.train_idx),
                "n_validation": len(self.val_idx),
                "skipped_rows": len(self.corpus.skipped),
                "labelled": None if self.labelled_path is None else str(self.labelled_path),
            },
            "steps": {"planned": cfg.steps, "done": self.step},
            "tokens_seen": self.tokens_seen,
            "wall_seconds": round(self.elapsed(), 1),
            "train_seconds": round(self.train_seconds, 1),
            "hardware": _hardware(self.device),
            "seed": cfg.seed,
            "init_from": self.initial_model,
            "validation": self.history[-1] if self.history else None,
            "validation_history": self.history,
            "calibration": self.calibration or None,
            "adjustments": self.adjustments,
            "skipped_steps": self.skipped_steps,
            "position_handling": (
                "short crops placed at random offsets of the position axis (position_offset_prob per phase: "
                f"{[p.position_offset_prob for p in cfg.curriculum]}), plus phases of crops up to "
                f"{max(p.max_tokens for p in cfg.curriculum)} tokens"
            ),
            "tokenizer": self.tokenizer.to_dict(),
            "channels": self.model.channel_record(),
            "config": cfg.to_dict(),
        }

    def _trainer_state(self) -> dict[str, Any]:
        return {
            "tokens_seen": self.tokens_seen,
            "train_seconds": self.train_seconds,
            "history": self.history,
            "calibration": self.calibration,
            "adjustments": self.adjustments,
            "skipped_steps": self.skipped_steps,
        }

    def _save(self, status: str, checkpoint: bool) -> None:
        t = time.perf_counter()
        if checkpoint:
            save_checkpoint(self.out, self.step, self.model, self.tokenizer, self.optimizer, self._trainer_state())
        save_model(self.model, self.out, tokenizer=self.tokenizer, training=self.training_record(status))
        self.save_seconds = max(0.5, time.perf_counter() - t)
        self._last_checkpoint = _clock()

    # ------------------------------------------------------------------ run
    def run(self, stop_at: int | None = None) -> dict[str, Any]:
        """Train; returns the ``training.json`` record of the final model.

        Args:
            stop_at: Pause once this many steps are done (a checkpoint is written; ``resume`` continues the
                same schedule). None trains to the end of the schedule.
        """
        start_step, ckpt_dir = self._prepare_output()
        self._resume_dir = ckpt_dir
        cfg = self.config
        self._load_data()
        self.file_records = [_file_record(f) for f in self.corpus.files]
        self._build_model()
        self.builder = self._make_builder()
        prefetcher = Prefetcher(self.builder, cfg.num_workers, cfg.prefetch)  # fork before CUDA starts
        self._pool = prefetcher.pool
        try:
            return self._run(start_step, ckpt_dir, prefetcher, stop_at)
        finally:
            prefetcher.close()

    def _run(
        self, start_step: int, ckpt_dir: Path | None, prefetcher: Prefetcher, stop_at: int | None
    ) -> dict[str, Any]:
        self.device = _resolve_device(self.config.device)
        self._make_val_sets()
        self._load_labelled()
        if ckpt_dir is not None:
            self.model = load_model(ckpt_dir, map_location="cpu")
            state = json.loads((ckpt_dir / "trainer_state.json").read_text(encoding="utf-8"))
            self.tokens_seen = int(state["tokens_seen"])
            self.train_seconds = float(state["train_seconds"])
            self.history = list(state.get("history", []))
            self.calibration = state.get("calibration", {})
            self.adjustments = list(state.get("adjustments", []))
            self.skipped_steps = int(state.get("skipped_steps", 0))
            self.step = start_step
            self._truncate_metrics(start_step)
        self.model.to(self.device).train()
        self._dropout = self.model.stack.needs_rng_replay()
        self._make_optimizer()
        if ckpt_dir is not None:
            load_optimizer_state(self.optimizer, ckpt_dir)
            self.log(f"resumed from {ckpt_dir} at step {start_step}")
        cfg = self.config
        self.log(
            f"model {self.model.num_parameters():,} parameters, device {self.device}"
            f"{' (bf16 autocast)' if self.device.type == 'cuda' and cfg.bf16 else ''}; "
            f"tokenizer {self.tokenizer!r}"
        )
        if ckpt_dir is None:
            atomic_write_text(self.out / CONFIG_FILE, cfg.to_json())
            if self._has_validation() and cfg.eval_at_start:
                self._log_eval(self.evaluate())
            if cfg.auto_steps:
                if self._has_validation() and self.eval_seconds == 0.0:
                    self.eval_seconds = self._estimate_eval_seconds()
                self.calibration = self.calibrate()
                steps = self._choose_steps()
                self.calibration["chosen_steps"] = steps
                self.calibration["budget_s"] = self.budget
                self.calibration["elapsed_at_choice_s"] = round(self.elapsed(), 1)
                self.config = cfg = cfg.replace(steps=steps, auto_steps=False)
                self.builder.curriculum = list(cfg.curriculum)
                self.log(f"auto_steps: {steps} steps fit the {cfg.max_minutes} min budget")
            self.builder.total_steps = cfg.steps
            atomic_write_text(self.out / CONFIG_FILE, cfg.to_json())
        self.builder.total_steps = cfg.steps
        if self._has_validation() and self.eval_seconds == 0.0 and math.isfinite(self.budget):
            self.eval_seconds = self._estimate_eval_seconds()  # reserve time for the final validation
        status = self._loop(prefetcher, stop_at)
        if self._has_validation():
            self._log_eval(self.evaluate())
        self._save(status, checkpoint=True)
        record = self.training_record(status)
        self.log(
            f"{status}: {self.step}/{cfg.steps} steps, {self.tokens_seen:,} tokens, {self.elapsed():.0f} s; "
            f"model {self.model.model_id} written to {self.out}"
        )
        return record

    def _loop(self, prefetcher: Prefetcher, stop_at: int | None) -> str:
        cfg = self.config
        bar = self._tqdm(
            total=cfg.steps, initial=self.step, desc="train", unit="step", disable=not cfg.progress,
            mininterval=1.0 if sys.stderr.isatty() else 10.0, dynamic_ncols=True,
        )
        status = "complete"
        bad_run = 0
        self._last_checkpoint = _clock()
        try:
            while self.step < cfg.steps:
                if stop_at is not None and self.step >= stop_at:
                    status = f"paused at step {self.step}"
                    break
                phase_idx = phase_at(cfg.curriculum, self.step, cfg.steps)
                expected = self.step_time.get(phase_idx, 0.0)
                if self.elapsed() + expected + self._final_reserve() > self.budget:
                    status = "stopped at max_minutes"
                    self.log(f"time budget of {cfg.max_minutes} min reached: stopping at step {self.step}")
                    break
                t = time.perf_counter()
                batch = prefetcher.get(self.step, cfg.steps)
                wait = time.perf_counter() - t
                loss, grad_norm, applied = self._train_step(batch)
                self._sync()
                dt = time.perf_counter() - t
                old = self.step_time.get(phase_idx)
                self.step_time[phase_idx] = dt if old is None else 0.8 * old + 0.2 * dt
                self.train_seconds += dt
                self.tokens_seen += batch.n_tokens
                self.step += 1
                if not applied:
                    self.skipped_steps += 1
                    bad_run += 1
                    self.log(f"step {self.step}: loss {loss} / gradient norm {grad_norm}: not finite, update skipped")
                    if bad_run >= 5:
                        status = "stopped: loss not finite"
                        break
                else:
                    bad_run = 0
                tok_s = batch.n_tokens / max(dt, 1e-9)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tok_s:,.0f}", len=cfg.curriculum[batch.phase].max_tokens)
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    self._append_metrics({
                        "kind": "train", "step": self.step, "loss": round(loss, 6), "lr": self.lr_at(batch.step),
                        "grad_norm": round(grad_norm, 4),
                        "phase": batch.phase, "max_tokens": cfg.curriculum[batch.phase].max_tokens,
                        "tokens": batch.n_tokens, "tokens_per_s": round(tok_s, 1), "data_wait_s": round(wait, 4),
                        "step_s": round(dt, 4), "elapsed_s": round(self.elapsed(), 2),
                    })
                due = cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.steps
                fits = self.elapsed() + 2 * self.eval_seconds + self._final_reserve() < self.budget
                if due and fits and self._has_validation():
                    self._log_eval(self.evaluate())
                by_steps = cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0
                by_time = cfg.checkpoint_seconds and _clock() - self._last_checkpoint >= cfg.checkpoint_seconds
                if (by_steps or by_time) and self.step < cfg.steps:
                    self._save("in progress", checkpoint=True)
        finally:
            bar.close()
        return status


def train(
    corpus: str | Path,
    output_dir: str | Path,
    config: TrainConfig | None = None,
    labelled: str | Path | None = None,
    resume: bool = False,
    command: str | None = None,
    log: Any = None,
) -> dict[str, Any]:
    """Train an encoder on ``corpus`` into ``output_dir``; returns the final ``training.json`` record.

    Example:
        >>> from reformer_retrieval.train import TrainConfig, train    # doctest: +SKIP
        >>> train("corpus/", "runs/model", TrainConfig.from_json("configs/smoke.json"))  # doctest: +SKIP
    """
    return Trainer(config, corpus, output_dir, labelled, resume, command, log).run()
