"""Validation metrics: recall@1 of augmented copies, and pair ROC-AUC / best F1 on a labelled set.

`embed_token_ids` is the small, batch-by-length embedding loop the trainer and the quality benchmark use on
token ids they have already made (the user-facing front door for texts is ``reformer_retrieval.encode``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["embed_token_ids", "length_batches", "pair_metrics", "recall_at_1"]


def length_batches(lengths: Sequence[int], batch_tokens: int, max_batch: int = 256) -> list[list[int]]:
    """Group indices into batches of similar length: at most ``batch_tokens`` padded tokens (one item per
    batch if a single item exceeds it) and ``max_batch`` items each; longest first."""
    order = sorted(range(len(lengths)), key=lambda i: -int(lengths[i]))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        n = max(1, int(lengths[i]))
        width = max(longest, n)
        if current and (width * (len(current) + 1) > batch_tokens or len(current) >= max_batch):
            batches.append(current)
            current, width = [], n
        current.append(i)
        longest = width
    if current:
        batches.append(current)
    return batches


@torch.no_grad()
def embed_token_ids(
    model: torch.nn.Module,
    ids: Sequence[np.ndarray],
    device: torch.device | str = "cpu",
    batch_tokens: int = 1 << 16,
    autocast_dtype: torch.dtype | None = None,
    progress: Any = None,
) -> np.ndarray:
    """Embed token id arrays with ``model`` in evaluation mode; returns float32 (n, dim), in input order.

    Args:
        model: A `ReformerEncoder` (switched to eval mode for the call and restored afterwards).
        ids: One int array of token ids per document (no padding).
        device: Where to run.
        batch_tokens: Padded tokens per forward pass.
        autocast_dtype: e.g. ``torch.bfloat16`` for autocast on CUDA; None runs in float32.
        progress: Optional tqdm-like object; ``update(k)`` is called after each batch.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    dim = model.config.embedding_dim
    out = np.zeros((len(ids), dim), dtype=np.float32)
    try:
        for batch in length_batches([len(x) for x in ids], batch_tokens):
            longest = max(len(ids[i]) for i in batch)
            input_ids = np.zeros((len(batch), longest), dtype=np.int64)
            mask = np.zeros((len(batch), longest), dtype=np.int64)
            for row, i in enumerate(batch):
                input_ids[row, : len(ids[i])] = ids[i]
                mask[row, : len(ids[i])] = 1
            ctx = (
                torch.autocast(device_type=device.type, dtype=autocast_dtype)
                if autocast_dtype is not None
                else contextlib.nullcontext()
            )
            with ctx:
                emb = model(torch.from_numpy(input_ids).to(device), torch.from_numpy(mask).to(device))
            out[batch] = emb.float().cpu().numpy()
            if progress is not None:
                progress.update(len(batch))
    finally:
        model.train(was_training)
    return out


def recall_at_1(queries: np.ndarray, gallery: np.ndarray, subset: Sequence[int] | None = None) -> dict[str, float]:
    """Recall@1 and mean reciprocal rank of finding ``gallery[i]`` for ``queries[i]`` among all of ``gallery``.

    Args:
        queries: (n, d) unit vectors; gallery: (n, d) unit vectors (row ``i`` is query ``i``'s match).
        subset: Only these query rows are scored (the gallery stays whole).

    Returns:
        ``{"recall@1", "mrr", "n_queries", "n_gallery"}``.
    """
    rows = np.arange(len(queries)) if subset is None else np.asarray(list(subset), dtype=np.int64)
    if len(rows) == 0:
        return {"recall@1": float("nan"), "mrr": float("nan"), "n_queries": 0, "n_gallery": len(gallery)}
    sims = queries[rows] @ gallery.T
    own = sims[np.arange(len(rows)), rows]
    rank = 1 + (sims > own[:, None]).sum(axis=1)
    return {
        "recall@1": float(np.mean(rank == 1)),
        "mrr": float(np.mean(1.0 / rank)),
        "n_queries": len(rows),
        "n_gallery": len(gallery),
    }


def pair_metrics(similarity: np.ndarray, labels: Sequence[Any]) -> dict[str, float]:
    """ROC-AUC and the best F1 over thresholds of all pairs ``i < j``; a pair is positive when the two labels
    are equal.

    Args:
        similarity: (n, n) symmetric similarity matrix (cosine similarities, Jaccard estimates, ...).
        labels: Cluster label of each item.

    Returns:
        ``{"roc_auc", "best_f1", "best_threshold", "n_pairs", "n_positive"}``.
    """
    from sklearn.metrics import precision_recall_curve, roc_auc_score

    labels_arr = np.asarray(labels)
    n = len(labels_arr)
    if similarity.shape != (n, n):
        raise ValueError(f"similarity must be ({n}, {n}), got {similarity.shape}")
    iu = np.triu_indices(n, k=1)
    scores = np.asarray(similarity, dtype=np.float64)[iu]
    truth = labels_arr[iu[0]] == labels_arr[iu[1]]
    n_pos = int(truth.sum())
    if n_pos == 0 or n_pos == len(truth):
        raise ValueError("pair metrics need both positive and negative pairs (check the cluster labels)")
    auc = float(roc_auc_score(truth, scores))
    precision, recall, thresholds = precision_recall_curve(truth, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    best = int(np.argmax(f1[:-1])) if len(thresholds) else 0
    return {
        "roc_auc": auc,
        "best_f1": float(f1[best]),
        "best_threshold": float(thresholds[best]) if len(thresholds) else float("nan"),
        "n_pairs": len(truth),
        "n_positive": n_pos,
    }
