"""Self-supervised near-duplicate training of the encoder.

* `augment` / `AugmentPolicy` / `PRESETS`: seeded near-duplicate transformations of text.
* `TrainConfig` / `CurriculumPhase`: the settings of a run (JSON round trip).
* `train` / `Trainer`: the training loop (symmetric InfoNCE over two augmented views, length curriculum,
  checkpoints, exact resume, validation on held-out documents).
* `info_nce`: the loss.
"""

from __future__ import annotations

from reformer_retrieval.train.augment import OPS, PRESETS, AugmentPolicy, augment
from reformer_retrieval.train.config import TrainConfig
from reformer_retrieval.train.data import BatchBuilder, CurriculumPhase, read_corpus, split_holdout
from reformer_retrieval.train.loss import info_nce
from reformer_retrieval.train.metrics import pair_metrics, recall_at_1
from reformer_retrieval.train.trainer import Trainer, TrainError, train

__all__ = [
    "OPS",
    "PRESETS",
    "AugmentPolicy",
    "BatchBuilder",
    "CurriculumPhase",
    "TrainConfig",
    "TrainError",
    "Trainer",
    "augment",
    "info_nce",
    "pair_metrics",
    "read_corpus",
    "recall_at_1",
    "split_holdout",
    "train",
]
