"""Dedup as streaming stages with Parquet shards between them, run by a local or a Ray engine.

``read -> sketch | embed -> bands -> candidates -> verify -> components -> clusters``; each stage is a
`ShardTask` (a plain function of a shard index over Arrow tables), written shard by shard, atomically, and
skipped on rerun when complete (`StageRunner`). `dedup_pipeline` is the front door; the engine only
schedules, so `LocalEngine` and ``reformer_retrieval.ray_engine.RayEngine`` give identical outputs.
"""

from reformer_retrieval.pipeline.bands import DEFAULT_RECALL, srp_params, srp_recall
from reformer_retrieval.pipeline.candidates import DEFAULT_BUCKET_CAP, star_edges
from reformer_retrieval.pipeline.flow import PIPELINE_INDEXES, dedup_pipeline
from reformer_retrieval.pipeline.runner import Engine, LocalEngine, ShardTask, StageInfo, StageRunner
from reformer_retrieval.pipeline.verify import exact_jaccard

__all__ = [
    "DEFAULT_BUCKET_CAP",
    "DEFAULT_RECALL",
    "PIPELINE_INDEXES",
    "Engine",
    "LocalEngine",
    "ShardTask",
    "StageInfo",
    "StageRunner",
    "dedup_pipeline",
    "exact_jaccard",
    "srp_params",
    "srp_recall",
    "star_edges",
]
