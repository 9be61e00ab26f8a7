"""Connected components without one task holding every edge: alternating large-star / small-star rounds.

The algorithm of Kiveris et al., "Connected Components in MapReduce and Beyond" (SoCC 2014), each step a
stage of ``n_parts`` shard tasks over edges partitioned by a hash of their key node (one row group per
partition, as between the other stages), so a task holds only the edges of its partition:

* **large-star** (edges keyed by either end): every node ``u`` links each larger neighbour ``v`` to
  ``m(u)``, the smallest of ``u`` and its neighbours;
* **small-star** (edges keyed by their larger end): every node ``u`` links itself and its smaller
  neighbours to the smallest of them.

Both keep the components and shrink the graph to stars centred at each component's smallest row id; the
rounds stop when a large-star step finds every node either a centre (no smaller neighbour) or a leaf with
exactly one, smaller, neighbour. Then `LabelTask` gives every document of each read shard its centre and
`RankTask` numbers the clusters by their smallest row (the numbering of `reformer_retrieval.dedup.union_find`,
so the result equals the single-task `ComponentsTask`'s). Each round reads every partition of the previous
step's output (memory per task: one partition of the edges); the label step reads, per read shard, the
star edges of its rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from reformer_retrieval.pipeline.bands import _mix
from reformer_retrieval.pipeline.runner import ShardTask, StageInfo, StageRunner

__all__ = ["LabelTask", "RankTask", "StarStepTask", "star_components"]

#: Most large-star / small-star rounds before giving up (the paper bounds them by O(log^2 n)).
MAX_ROUNDS = 200


def _part(keys: np.ndarray, n_parts: int) -> np.ndarray:
    return (_mix(keys.astype(np.uint64)) % np.uint64(n_parts)).astype(np.int32)


def _keyed(u: np.ndarray, v: np.ndarray, n_parts: int) -> pa.Table:
    """Edges ``u -> v`` (unique), with the partition of ``u``, sorted by it."""
    if len(u):
        pairs = np.unique(np.stack([u, v], axis=1), axis=0)
        u, v = pairs[:, 0], pairs[:, 1]
    part = _part(u, n_parts)
    order = np.lexsort((v, u, part))
    return pa.table({"u": u[order].astype(np.int64), "v": v[order].astype(np.int64), "part": part[order]})


def _group_min(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sorted ``(u, v)``, per edge ``min(u, min of u's neighbours)``, and the mask of each ``u`` group's first edge."""
    order = np.lexsort((v, u))
    u, v = u[order], v[order]
    start = np.ones(len(u), bool)
    start[1:] = u[1:] != u[:-1]
    idx = np.flatnonzero(start)
    mins = np.minimum.reduceat(v, idx) if len(idx) else np.zeros(0, v.dtype)
    m = np.minimum(u[idx], mins)
    return u, v, np.repeat(m, np.diff(np.append(idx, len(u)))), start


class StarStepTask(ShardTask):
    """One large-star or small-star step (``kind``) over ``n_parts`` edge partitions.

    The input edges are ``u -> v`` rows partitioned by ``u``; ``init`` reads verify shard ``i`` (its pairs
    ``a < b``) as task ``i`` and keys each pair both ways.
    """

    row_group_key = "part"

    def __init__(self, name: str, kind: str, inputs: list[str], n_parts: int, init: bool = False) -> None:
        if kind not in ("init", "large", "small"):
            raise ValueError(f"unknown star step {kind!r}")
        self.name, self.kind, self.inputs, self.n_parts, self.init = name, kind, list(inputs), int(n_parts), init

    def n_shards(self) -> int:
        """One per partition."""
        return self.n_parts

    def settings(self) -> dict[str, Any]:
        """Kind and partitioning."""
        return {"kind": self.kind, "parts": self.n_parts}

    def _edges(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if self.kind == "init":  # verify shard ``index``: its pairs a < b, both directions keyed below
            t = pads.dataset([self.inputs[index]], format="parquet").to_table(columns=["a", "b"])
            return t.column("a").to_numpy(), t.column("b").to_numpy()
        t = pads.dataset(self.inputs, format="parquet").to_table(columns=["u", "v"], filter=pc.field("part") == index)
        return t.column("u").to_numpy(), t.column("v").to_numpy()

    def run(self, index: int) -> tuple[pa.Table, dict[str, Any]]:
        """The step's output edges for partition ``index`` (keyed for the next step)."""
        u, v = self._edges(index)
        if self.kind == "init":  # both directions of each pair, keyed by their first node
            return _keyed(np.concatenate([u, v]), np.concatenate([v, u]), self.n_parts), {}
        if len(u):
            pairs = np.unique(np.stack([u, v], axis=1), axis=0)
            u, v = pairs[:, 0], pairs[:, 1]
        if self.kind == "large":
            u, v, m, start = _group_min(u, v)
            # stars already? every node a centre (all neighbours larger) or a leaf with one smaller neighbour
            sizes = np.diff(np.append(np.flatnonzero(start), len(u)))
            first_v = v[start]
            first_u = u[start]
            centre = first_v > first_u
            leaf = (sizes == 1) & (first_v < first_u)
            stars = bool(np.all(centre | leaf))
            out = v > u  # link each larger neighbour v to m(u), keyed by v (the larger end) for small-star
            return _keyed(v[out], m[out], self.n_parts), {"stars": stars, "edges": len(u)}
        # small-star: rows are (u = larger end, v = smaller neighbour)
        u, v, m, start = _group_min(u, v)
        nodes = np.concatenate([v, u[start]])
        roots = np.concatenate([m, m[start]])
        keep = nodes != roots
        x, y = nodes[keep], roots[keep]
        return _keyed(np.concatenate([x, y]), np.concatenate([y, x]), self.n_parts), {"edges": len(u)}


class LabelTask(ShardTask):
    """Per read shard: each document's centre (its component's smallest row) and whether it is one."""

    name = "cc-labels"

    def __init__(self, read_paths: list[str], shard_ranges: list[tuple[int, int]], star_paths: list[str]) -> None:
        self.read_paths, self.ranges, self.star_paths = list(read_paths), list(shard_ranges), list(star_paths)

    def n_shards(self) -> int:
        """One per read shard."""
        return len(self.read_paths)

    def run(self, index: int) -> tuple[pa.Table, dict[str, Any]]:
        """``row``, ``root`` of the documents of read shard ``index``."""
        t = pads.dataset([self.read_paths[index]], format="parquet").to_table(
            columns=["row"], filter=pc.field("skip_reason").is_null())
        rows = np.sort(t.column("row").to_numpy())
        start, stop = self.ranges[index]
        roots = rows.copy()
        if self.star_paths:
            f = (pc.field("u") >= start) & (pc.field("u") < stop) & (pc.field("v") < pc.field("u"))
            e = pads.dataset(self.star_paths, format="parquet").to_table(columns=["u", "v"], filter=f)
            leaf, centre = e.column("u").to_numpy(), e.column("v").to_numpy()
            pos = np.searchsorted(rows, leaf)
            roots[pos] = centre
        return pa.table({"row": rows, "root": roots}), {"roots": int((roots == rows).sum())}


class RankTask(ShardTask):
    """Per read shard: ``row``, ``cluster`` = the rank of the row's centre among all centres in row order."""

    name = "components"

    def __init__(self, label_paths: list[str], shard_ranges: list[tuple[int, int]], offsets: list[int]) -> None:
        self.label_paths, self.ranges, self.offsets = list(label_paths), list(shard_ranges), list(offsets)

    def n_shards(self) -> int:
        """One per read shard."""
        return len(self.label_paths)

    def _centres(self, shard: int) -> np.ndarray:
        t = pads.dataset([self.label_paths[shard]], format="parquet").to_table(columns=["row", "root"])
        rows, roots = t.column("row").to_numpy(), t.column("root").to_numpy()
        return np.sort(rows[rows == roots])

    def run(self, index: int) -> tuple[pa.Table, dict[str, Any]]:
        """Cluster numbers of read shard ``index``'s documents."""
        t = pads.dataset([self.label_paths[index]], format="parquet").to_table(columns=["row", "root"])
        rows, roots = t.column("row").to_numpy(), t.column("root").to_numpy()
        starts = np.array([s for s, _ in self.ranges])
        owner = np.searchsorted(starts, roots, side="right") - 1
        cluster = np.empty(len(rows), np.int64)
        for shard in np.unique(owner).tolist():  # one lookup per read shard holding some of these centres
            centres = self._centres(shard)
            here = owner == shard
            cluster[here] = self.offsets[shard] + np.searchsorted(centres, roots[here])
        return pa.table({"row": rows, "cluster": cluster}), {}


def star_components(runner: StageRunner, read: StageInfo, verify: StageInfo) -> StageInfo:
    """Run init + large-star / small-star rounds until stars, then label and rank; returns the last stage.

    Its shards (one per read shard) hold ``row``, ``cluster`` as `ComponentsTask`'s single shard does. The
    edges are split into as many partitions as ``verify`` has shards.
    """
    n_parts = verify.shards
    ranges = [(int(r["start"]), int(r["stop"])) for r in read.reports]
    step = runner.run(StarStepTask("cc-000-init", "init", [str(p) for p in verify.paths], n_parts), [verify])
    for r in range(1, MAX_ROUNDS + 1):
        large = runner.run(StarStepTask(f"cc-{r:03d}-large", "large", [str(p) for p in step.paths], n_parts), [step])
        if all(rep.get("stars", True) for rep in large.reports):
            break
        step = runner.run(StarStepTask(f"cc-{r:03d}-small", "small", [str(p) for p in large.paths], n_parts),
                          [large])
    else:
        raise RuntimeError(f"connected components did not converge in {MAX_ROUNDS} large-star / small-star rounds")
    labels = runner.run(LabelTask([str(p) for p in read.paths], ranges, [str(p) for p in step.paths]),
                        [read, step])
    offsets = np.concatenate([[0], np.cumsum([int(rep["roots"]) for rep in labels.reports])[:-1]]).tolist()
    return runner.run(RankTask([str(p) for p in labels.paths], ranges, [int(o) for o in offsets]), [labels])
