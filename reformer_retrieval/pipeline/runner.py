"""Stage runner: each stage is a list of shard tasks whose outputs are Parquet shards in one directory.

A stage directory holds ``part-00000.parquet``, ``part-00001.parquet``, ... (one per task, each written to a
temporary name and renamed, so a shard under its final name is always complete), ``_STARTED.json`` (the
stage's fingerprint: its settings and its inputs' fingerprints) and, once every shard is there,
``_SUCCESS.json`` (fingerprint, shard count, rows, seconds and the tasks' reports). On a rerun:

* a stage whose ``_SUCCESS.json`` carries the same fingerprint is skipped;
* a stage started with the same fingerprint runs only the tasks whose shard is missing (a killed run
  resumes at the shard it stopped in; each shard, hence each row id, is written exactly once);
* a stage started with another fingerprint (other settings or other inputs) is cleared and run again.

An *engine* only schedules the tasks: `LocalEngine` runs them one after the other in this process;
``reformer_retrieval.ray_engine.RayEngine`` runs the same task objects on a Ray cluster. A task is an
instance of a `ShardTask` subclass (picklable; ``setup`` loads heavy state once per process / actor,
``__call__(i)`` returns the Arrow table of shard ``i`` and a JSON-able report), so what a shard holds never
depends on the engine.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from reformer_retrieval.atomic import atomic_path, atomic_write_text

__all__ = [
    "Engine",
    "LocalEngine",
    "ShardTask",
    "StageInfo",
    "StageRunner",
    "fingerprint",
    "shard_path",
    "write_shard",
]

logger = logging.getLogger(__name__)

STARTED = "_STARTED.json"
SUCCESS = "_SUCCESS.json"


def fingerprint(settings: dict[str, Any]) -> str:
    """A short stable hash of JSON-able ``settings``."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def shard_path(stage_dir: str | Path, index: int) -> Path:
    """Where shard ``index`` of a stage lives."""
    return Path(stage_dir) / f"part-{index:05d}.parquet"


def write_shard(table: pa.Table, path: Path, row_group_key: str | None = None) -> None:
    """Write ``table`` atomically; with ``row_group_key`` (a sorted int column) one row group per key value.

    One row group per value lets a reader filtering on that column (``pyarrow.dataset`` ``filter=``) skip
    the other row groups from their statistics: the shuffle between stages is a filter, not a rewrite.
    """
    with atomic_path(path, suffix=".parquet") as tmp:
        if row_group_key is None or table.num_rows == 0:
            pq.write_table(table, tmp)
            return
        keys = table.column(row_group_key).to_numpy()
        import numpy as np

        cut = np.flatnonzero(keys[1:] != keys[:-1]) + 1
        bounds = [0, *cut.tolist(), table.num_rows]
        with pq.ParquetWriter(tmp, table.schema) as writer:
            for lo, hi in itertools.pairwise(bounds):
                writer.write_table(table.slice(lo, hi - lo), row_group_size=hi - lo)


class ShardTask:
    """One stage's work, shard by shard. Subclasses set `name` and implement `n_shards` and `run`.

    Instances are pickled to Ray workers, so they hold settings and paths only; `setup` loads heavy state
    (a model, a FAISS index) once per process or actor.
    """

    name: str = "stage"
    #: Column whose values get one row group each (see `write_shard`), or None.
    row_group_key: str | None = None
    #: True when `setup` loads costly state (an engine then keeps it in long-lived workers / actors).
    stateful: bool = False

    def n_shards(self) -> int:
        """Number of shards (tasks)."""
        raise NotImplementedError

    def __getstate__(self) -> dict[str, Any]:
        # per-process state (attributes named ``_state...``) is rebuilt by `setup` where the task lands
        return {k: v for k, v in self.__dict__.items() if not (k.startswith("_state") or k == "_ready")}

    def settings(self) -> dict[str, Any]:
        """What the output depends on besides the inputs' fingerprints (JSON-able)."""
        return {}

    def setup(self) -> None:
        """Load per-process state (called once before the first `run` in a process or actor)."""

    def run(self, index: int) -> tuple[pa.Table, dict[str, Any]]:
        """The table of shard ``index`` and a small JSON-able report about it."""
        raise NotImplementedError

    def run_and_write(self, stage_dir: str | Path, index: int) -> dict[str, Any]:
        """Run shard ``index`` and write it atomically; returns its report (with ``rows`` and ``shard``)."""
        if not getattr(self, "_ready", False):
            self.setup()
            self._ready = True
        table, report = self.run(index)
        write_shard(table, shard_path(stage_dir, index), self.row_group_key)
        report = dict(report)
        report.update(shard=index, rows=table.num_rows)
        atomic_write_text(Path(stage_dir) / f"_report-{index:05d}.json", json.dumps(report, default=str))
        return report


class Engine(Protocol):
    """Runs the missing shards of a stage."""

    name: str

    def run(self, task: ShardTask, stage_dir: Path, shards: Sequence[int], show_progress: bool) -> None:
        """Run ``task`` for every index in ``shards``, each writing its own shard and report."""


class LocalEngine:
    """Runs shards one after the other in this process."""

    name = "local"

    def run(self, task: ShardTask, stage_dir: Path, shards: Sequence[int], show_progress: bool) -> None:
        """See `Engine.run`."""
        for index in tqdm(shards, desc=task.name, unit="shard", disable=not show_progress or len(shards) < 2):
            task.run_and_write(stage_dir, index)


@dataclass
class StageInfo:
    """What a finished stage left behind.

    Attributes:
        name: Stage name (its directory name).
        directory: The stage directory.
        fingerprint: Hash of its settings and inputs.
        shards: Number of shards.
        rows: Rows over all shards.
        seconds: Wall time of the run that finished it (0 shards run: the time it took earlier).
        reports: Each shard's report, in shard order.
        skipped: True when this run found it complete and ran nothing.
    """

    name: str
    directory: Path
    fingerprint: str
    shards: int
    rows: int
    seconds: float
    reports: list[dict[str, Any]] = field(default_factory=list)
    skipped: bool = False

    @property
    def paths(self) -> list[Path]:
        """The shard files, in order."""
        return [shard_path(self.directory, i) for i in range(self.shards)]


class StageRunner:
    """Runs stages under ``work_dir`` with an engine, skipping finished stages and shards.

    Args:
        work_dir: One directory per stage is made here.
        engine: `LocalEngine` (default) or a ``RayEngine``.
        show_progress: tqdm bars per stage.
    """

    def __init__(self, work_dir: str | Path, engine: Engine | None = None, show_progress: bool = False) -> None:
        self.work_dir = Path(work_dir)
        self.engine = engine or LocalEngine()
        self.show_progress = show_progress
        self.stages: dict[str, StageInfo] = {}

    def run(self, task: ShardTask, inputs: Sequence[StageInfo] = ()) -> StageInfo:
        """Run (or skip, or resume) ``task``'s stage; its fingerprint covers its settings and ``inputs``."""
        stage_dir = self.work_dir / task.name
        n = task.n_shards()
        fp = fingerprint({"stage": task.name, "settings": task.settings(), "shards": n,
                          "inputs": [s.fingerprint for s in inputs]})
        done = _read_json(stage_dir / SUCCESS)
        if done is not None and done.get("fingerprint") == fp:
            info = StageInfo(task.name, stage_dir, fp, n, int(done["rows"]), float(done["seconds"]),
                             list(done.get("reports", [])), skipped=True)
            self.stages[task.name] = info
            return info
        started = _read_json(stage_dir / STARTED)
        if stage_dir.exists() and (started is None or started.get("fingerprint") != fp):
            logger.info("stage %s: settings or inputs changed; clearing %s", task.name, stage_dir)
            shutil.rmtree(stage_dir)
        stage_dir.mkdir(parents=True, exist_ok=True)
        if started is None or started.get("fingerprint") != fp:
            atomic_write_text(stage_dir / STARTED, json.dumps({"fingerprint": fp, "shards": n}))
        t0 = time.perf_counter()
        missing = [i for i in range(n) if not (shard_path(stage_dir, i).is_file()
                                               and (stage_dir / f"_report-{i:05d}.json").is_file())]
        if missing:
            self.engine.run(task, stage_dir, missing, self.show_progress)
        seconds = time.perf_counter() - t0
        reports = []
        for i in range(n):
            report = _read_json(stage_dir / f"_report-{i:05d}.json")
            if report is None or not shard_path(stage_dir, i).is_file():
                raise RuntimeError(f"stage {task.name}: shard {i} was not written by the engine ({stage_dir})")
            reports.append(report)
        rows = sum(int(r["rows"]) for r in reports)
        atomic_write_text(stage_dir / SUCCESS, json.dumps(
            {"fingerprint": fp, "shards": n, "rows": rows, "seconds": round(seconds, 3), "reports": reports},
            default=str))
        info = StageInfo(task.name, stage_dir, fp, n, rows, seconds, reports)
        self.stages[task.name] = info
        return info

    def seconds(self) -> dict[str, float]:
        """Seconds per stage run so far (0 for stages found complete)."""
        return {name: round(0.0 if s.skipped else s.seconds, 3) for name, s in self.stages.items()}


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
