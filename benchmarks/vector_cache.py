"""A benchmark's vector cache: one npy of vectors and a JSON of the hashes of their texts, so reruns are free.

``<folder>/<name>.npy`` holds one row per cached text; ``<folder>/<name>.json`` holds the settings the vectors
were made with (a cache made with other settings is refused, not mixed), the blake2b-128 hash of every cached
text in row order, and the characters encoded and seconds spent filling it (its own chars/s record). Both
files are written atomically; no pickle. Rows are only ever appended. Several processes may share a cache:
each write takes an exclusive lock (``<name>.lock``, ``fcntl.flock``), re-reads the files and appends its new
rows to what is there, so no process drops another's rows; a read takes a shared lock.

`encode_cached` wraps any ``texts -> vectors`` function with such a cache (the benchmarks use it for the
model's vectors, so `model_quality.py` and `dedup_quality.py` on the same texts encode them once).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DEFAULT_CACHE_ROOT", "VectorCache", "encode_cached", "encoder_cache", "text_hash"]

DEFAULT_CACHE_ROOT = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "reformer_retrieval"


def text_hash(text: str) -> str:
    """blake2b-128 hex digest of the UTF-8 text: the cache key of one document."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


@contextlib.contextmanager
def _locked(path: Path, exclusive: bool) -> Iterator[None]:
    """Hold an advisory lock on ``path`` (created if missing); a no-op where ``fcntl`` is unavailable."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not Unix
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class VectorCache:
    """Vectors of texts, keyed by text hash, stored as ``<folder>/<name>.npy`` + ``.json`` (see module doc)."""

    def __init__(self, folder: str | Path, name: str, settings: dict[str, Any]) -> None:
        self.npy = Path(folder).expanduser() / f"{name}.npy"
        self.meta_path = self.npy.with_suffix(".json")
        self.lock_path = self.npy.with_suffix(".lock")
        self.settings = json.loads(json.dumps(settings))  # as it reads back from JSON
        with _locked(self.lock_path, exclusive=False):
            self.hashes, self.vectors, self.chars, self.seconds = self._read()
        self.row = {h: i for i, h in enumerate(self.hashes)}

    def _read(self) -> tuple[list[str], np.ndarray | None, int, float]:
        """Hashes, vectors, characters and seconds on disk (nothing when the files are not there yet)."""
        if not (self.meta_path.is_file() and self.npy.is_file()):
            return [], None, 0, 0.0
        meta = json.loads(self.meta_path.read_text(encoding="utf-8"))
        if meta.get("settings") != self.settings:
            raise ValueError(f"{self.meta_path}: settings {meta.get('settings')} are not {self.settings}")
        vectors = np.load(self.npy, allow_pickle=False)
        if vectors.ndim != 2 or vectors.shape[0] != len(meta["hashes"]):
            raise ValueError(
                f"{self.npy}: shape {vectors.shape} does not match the {len(meta['hashes'])} hashes of "
                f"{self.meta_path.name}"
            )
        return (list(meta["hashes"]), vectors.astype(np.float32, copy=False), int(meta.get("chars_encoded", 0)),
                float(meta.get("encode_seconds", 0.0)))

    @property
    def chars_per_s(self) -> float | None:
        """Characters per second of the runs that filled the cache (None when nothing timed)."""
        return self.chars / self.seconds if self.seconds > 0 else None

    def get(self, text_hash_: str) -> np.ndarray | None:
        """The cached vector of a text hash, or None."""
        i = self.row.get(text_hash_)
        return None if i is None or self.vectors is None else self.vectors[i]

    def add(self, hashes: Sequence[str], vectors: np.ndarray, chars: int, seconds: float) -> None:
        """Append the rows not yet cached, with the characters and seconds they took, to the files on disk.

        Under the exclusive lock the files are read again and this object's rows that are not there (rows of
        a write another process overwrote without the lock) and the new ones are appended; both files are
        replaced atomically (npy first: a crash between the two leaves a JSON naming fewer rows than the npy
        holds, which is refused on load rather than misread).
        """
        from reformer_retrieval.atomic import atomic_path, atomic_write_text

        mine = dict(zip(self.hashes, self.vectors)) if self.vectors is not None else {}
        mine.update({h: v for h, v in zip(hashes, vectors) if h not in mine})
        fresh = any(h not in self.row for h in hashes)
        with _locked(self.lock_path, exclusive=True):
            disk_hashes, disk_vectors, disk_chars, disk_seconds = self._read()
            on_disk = set(disk_hashes)
            extra = [h for h in mine if h not in on_disk]
            if not extra and not fresh:
                return
            self.hashes = disk_hashes + extra
            new = np.stack([mine[h] for h in extra]).astype(np.float32) if extra else None
            parts = [v for v in (disk_vectors, new) if v is not None]
            self.vectors = np.concatenate(parts) if len(parts) > 1 else parts[0]
            self.chars, self.seconds = disk_chars + int(chars), disk_seconds + float(seconds)
            self.npy.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.npy, ".npy") as tmp, open(tmp, "wb") as fh:
                np.save(fh, self.vectors, allow_pickle=False)
            meta = {"settings": self.settings, "chars_encoded": self.chars, "encode_seconds": self.seconds,
                    "hashes": self.hashes}
            atomic_write_text(self.meta_path, json.dumps(meta) + "\n")
        self.row = {h: i for i, h in enumerate(self.hashes)}


def encode_cached(
    fn: Callable[[list[str]], np.ndarray],
    texts: Sequence[str],
    cache: VectorCache | None,
    save_every: int = 200,
    prepare: Callable[[], None] | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Vectors of ``texts``: cached ones looked up, the rest encoded by ``fn`` in groups of ``save_every``
    distinct texts (each group is added to the cache as it is done, so a stopped run resumes). ``prepare``
    (e.g. loading a model) is called once, untimed, before the first text is encoded, and only if one is.

    Returns the vectors and ``{"n_cached", "n_encoded", "chars_encoded", "seconds", "chars_per_s",
    "chars_per_s_from_cache"}``; when nothing had to be encoded, ``chars_per_s`` is the cache's record.
    """
    texts = [str(t) for t in texts]
    hashes = [text_hash(t) for t in texts]
    known: dict[str, np.ndarray] = {}
    if cache is not None:
        for h in set(hashes):
            v = cache.get(h)
            if v is not None:
                known[h] = v
    n_cached = sum(h in known for h in hashes)
    todo, seen = [], set()
    for i, h in enumerate(hashes):
        if h not in known and h not in seen:
            todo.append(i)
            seen.add(h)
    chars, seconds = 0, 0.0
    if todo and prepare is not None:
        prepare()
    for start in range(0, len(todo), save_every):
        group = todo[start : start + save_every]
        group_texts = [texts[i] for i in group]
        t0 = time.perf_counter()
        vectors = np.asarray(fn(group_texts), dtype=np.float32)
        spent = time.perf_counter() - t0
        group_chars = sum(len(t) for t in group_texts)
        chars, seconds = chars + group_chars, seconds + spent
        for k, i in enumerate(group):
            known[hashes[i]] = vectors[k]
        if cache is not None:
            cache.add([hashes[i] for i in group], vectors, group_chars, spent)
    if not texts:
        raise ValueError("no texts to encode")
    out = np.stack([known[h] for h in hashes])
    from_cache = not todo and cache is not None and cache.chars_per_s is not None
    speed = (chars / seconds if seconds > 0 else None) if todo else (cache.chars_per_s if from_cache else None)
    info = {"n_cached": n_cached, "n_encoded": len(todo), "chars_encoded": chars, "seconds": round(seconds, 3),
            "chars_per_s": speed, "chars_per_s_from_cache": from_cache}
    return out, info


def encoder_cache(encoder: Any, folder: str | Path) -> VectorCache:
    """The cache of a `reformer_retrieval.encode.Encoder`'s vectors, keyed by everything that shapes them:
    the model id, device type, dtype, ``max_tokens``, ``long_docs`` (and ``channels`` where the encoder has it)."""
    settings = {
        "model_id": encoder.model_id, "device": encoder.device.type, "dtype": str(encoder.dtype),
        "max_tokens": encoder.max_tokens, "long_docs": encoder.long_docs,
        "window_overlap": encoder.window_overlap, "channels": str(getattr(encoder, "channels", None)),
    }
    digest = hashlib.blake2b(json.dumps(settings, sort_keys=True).encode("utf-8"), digest_size=4).hexdigest()
    return VectorCache(folder, f"model-{encoder.model_id}-{digest}", settings)
