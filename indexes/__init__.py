"""Vector and lexical indexes (installed as ``reformer_retrieval.indexes``).

Embedding indexes (`VectorIndex`: ``add``, ``search``, ``range_search``, ``remove``, ``reconstruct``,
``save``, ``load``; inner product over unit vectors, ids are corpus ids):

* `FlatIndex` (``flat``): exact; `HNSWIndex` (``hnsw``); `IVFPQIndex` (``ivfpq``);
* `BinaryLSHIndex` (``lsh``): sign bits of fixed random rotations, Hamming buckets, exact re-scoring;
  tables / bits sized from a cosine threshold and a recall target by `lsh_params`.

Lexical: `MinHashIndex` (``minhash``) over word or character shingles.

Every index is saved as a directory (``manifest.json``, the index file(s), ``ids.parquet``) written
atomically (MinHash and LSH append shards on `index add`); `open_index` checks file sizes (full SHA-256
with ``verify=True``) and refuses an incomplete directory or one built by another model / dimension.
`set_threads` sets FAISS's OpenMP thread count.
"""

from reformer_retrieval.indexes.base import IndexInputError, RangeResult, SearchResult, VectorIndex
from reformer_retrieval.indexes.faiss_index import FlatIndex, HNSWIndex, IVFPQIndex, set_threads
from reformer_retrieval.indexes.lsh import BinaryLSHIndex, collision_probability
from reformer_retrieval.indexes.lsh_params import LSHParams, lsh_params, lsh_recall, min_cosine
from reformer_retrieval.indexes.minhash import MinHasher, MinHashIndex, Shingler, jaccard, optimal_params
from reformer_retrieval.indexes.store import (
    KINDS,
    VECTOR_KINDS,
    IndexDirectoryError,
    IndexMismatchError,
    build_index,
    open_index,
    read_manifest,
    save_index,
)

__all__ = [
    "KINDS",
    "VECTOR_KINDS",
    "BinaryLSHIndex",
    "FlatIndex",
    "HNSWIndex",
    "IVFPQIndex",
    "IndexDirectoryError",
    "IndexInputError",
    "IndexMismatchError",
    "LSHParams",
    "MinHashIndex",
    "MinHasher",
    "RangeResult",
    "SearchResult",
    "Shingler",
    "VectorIndex",
    "build_index",
    "collision_probability",
    "jaccard",
    "lsh_params",
    "lsh_recall",
    "min_cosine",
    "open_index",
    "optimal_params",
    "read_manifest",
    "save_index",
    "set_threads",
]
