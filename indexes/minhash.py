"""Lexical MinHash LSH over word or character shingles: vectorised numpy, no per-shingle Python hashing.

* `Shingler` turns a text into the sorted set of 64-bit hashes of its word n-grams (``\\w+`` tokens,
  lower-cased) or character n-grams (lower-cased, whitespace runs collapsed). Words are found and
  hashed without a Python loop (`word_codes`: a code-point mask and one polynomial hash per word),
  so hashes are stable across runs and machines; n-grams are combined and mixed with vectorised
  64-bit arithmetic. A text shorter than ``n`` tokens is one shingle (the whole text), so
  short texts do not all collapse into one empty signature (text-dedup #77); a text with no token at
  all gets the empty set and is never a candidate.
* `MinHasher` computes ``num_perm`` min-hashes per text with the multiply-shift family
  ``h_i(x) = ((a_i * x + b_i) mod 2**64) >> 32`` over the 32-bit-folded shingle hashes, as one
  ``(shingles x num_perm)`` array operation per batch of texts (``a_i``, ``b_i`` drawn from ``seed``
  and saved with the index).
* `optimal_params` derives bands x rows from a Jaccard threshold with datasketch's objective
  (weighted false-positive + false-negative areas under ``P(s) = 1 - (1 - s**r)**b``), integrated
  exactly by Gauss-Legendre quadrature.
* `MinHashIndex` buckets every band of every signature; `candidate_pairs` lists all pairs sharing a
  bucket (for dedup), `range_search` / `search` answer text queries by estimated Jaccard. Signatures
  are kept as shards (one per `add`, ``signatures-NNNNNN-XXXXXXXX.npy``; `reformer_retrieval.indexes.shards`):
  ``index add`` writes only the new shard, and band keys are computed on the first query.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from reformer_retrieval.indexes.base import IdMap, IndexInputError, RangeResult, SearchResult
from reformer_retrieval.indexes.shards import ShardedArray
from tqdm.auto import tqdm

__all__ = [
    "MinHashIndex",
    "MinHasher",
    "Shingler",
    "candidate_pairs_from_keys",
    "jaccard",
    "ngram_hashes",
    "optimal_params",
    "word_codes",
]

SIGNATURES_FILE = "signatures.npy"  # indexes written before shards
SIGNATURE_PREFIX = "signatures"
PERMUTATIONS_FILE = "minhash_perm.npy"
EMPTY = np.uint32(0xFFFFFFFF)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLD = np.uint64(0x9E3779B97F4A7C15)
_MASK64 = (1 << 64) - 1


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, element-wise on a uint64 array (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


def _combine(parts: np.ndarray, n: int) -> np.ndarray:
    """Hashes of all length-``n`` windows of the uint64 array ``parts`` (order-sensitive)."""
    m = len(parts) - n + 1
    h = np.full(m, np.uint64(n), dtype=np.uint64)
    for j in range(n):
        h = _mix64(h * _GOLD + parts[j:j + m])
    return h


def ngram_hashes(tokens: np.ndarray, n: int) -> np.ndarray:
    """uint64 hashes of the length-``n`` windows of a uint64 token array, in order: one window of all tokens if
    there are fewer than ``n``, none if there is no token (`Shingler`'s shingles of any kind of token)."""
    if len(tokens) == 0:
        return tokens
    return _combine(tokens, min(n, len(tokens)))


@dataclass(frozen=True)
class Shingler:
    """How a text becomes a set of shingles.

    Attributes:
        kind: ``"word"`` (``\\w+`` tokens) or ``"char"`` (Unicode characters).
        n: Shingle length in tokens or characters.
        lowercase: Lower-case the text first.
    """

    kind: str = "word"
    n: int = 2
    lowercase: bool = True

    def __post_init__(self) -> None:
        if self.kind not in ("word", "char"):
            raise ValueError(f"shingle kind must be 'word' or 'char', got {self.kind!r}")
        if self.n < 1:
            raise ValueError(f"shingle length must be >= 1, got {self.n}")

    def tokens(self, text: str) -> np.ndarray:
        """The uint64 token codes of ``text``: word hashes (``word``) or code points (``char``)."""
        if self.lowercase:
            text = text.lower()
        if self.kind == "char":
            text = " ".join(text.split())
            return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
        return word_codes(text)

    def hashes(self, text: str) -> np.ndarray:
        """uint64 hashes of the shingles of ``text`` in text order, repeats included (MinHash ignores them)."""
        return ngram_hashes(self.tokens(text), self.n)

    def shingles(self, text: str) -> np.ndarray:
        """Sorted unique uint64 hashes of the shingles of ``text`` (empty if it has no token)."""
        return np.unique(self.hashes(text))

    def to_json(self) -> dict[str, Any]:
        """The fields, for manifests."""
        return {"kind": self.kind, "n": self.n, "lowercase": self.lowercase}


_ASCII_WORD = np.zeros(128, dtype=bool)
for _c in "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_":
    _ASCII_WORD[ord(_c)] = True
_UNICODE_WORD: dict[int, bool] = {}  # code point -> is a \w character (a pure cache)
_POLY = 0x100000001B3  # odd, so invertible modulo 2**64
_POWERS = np.ones(1, dtype=np.uint64)  # _POLY**i mod 2**64
_INV_POWERS = np.ones(1, dtype=np.uint64)  # _POLY**-i mod 2**64


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(_POLY**i, _POLY**-i)`` for ``i < n`` (mod 2**64), grown by doubling and cached."""
    global _POWERS, _INV_POWERS
    if len(_POWERS) < n:
        size = max(n, 2 * len(_POWERS), 1 << 16)
        for name, base in (("p", _POLY), ("i", pow(_POLY, -1, 1 << 64))):
            arr = np.empty(size, dtype=np.uint64)
            arr[0] = 1
            arr[1:] = np.uint64(base)
            np.multiply.accumulate(arr, out=arr)
            if name == "p":
                _POWERS = arr
            else:
                _INV_POWERS = arr
    return _POWERS, _INV_POWERS


def _word_mask(cp: np.ndarray) -> np.ndarray:
    r"""Which code points are ``\w`` characters (alphanumeric per ``str.isalnum``, or ``_``), as ``re`` does."""
    ascii_ = cp < 128
    mask = np.zeros(len(cp), dtype=bool)
    mask[ascii_] = _ASCII_WORD[cp[ascii_]]
    if not ascii_.all():
        other = cp[~ascii_]
        uniq = np.unique(other)
        flags = np.empty(len(uniq), dtype=bool)
        for i, c in enumerate(uniq.tolist()):
            flag = _UNICODE_WORD.get(c)
            if flag is None:
                flag = _UNICODE_WORD[c] = chr(c).isalnum()
            flags[i] = flag
        mask[~ascii_] = flags[np.searchsorted(uniq, other)]
    return mask


def word_codes(text: str) -> np.ndarray:
    r"""A 64-bit hash of every word of ``text`` (maximal runs of ``\w`` characters, as ``re.findall(r"\w+")``).

    Fully vectorised: the code points are split into words by a mask, and each word gets the
    polynomial hash ``sum_j c_j * P**(len-1-j) mod 2**64`` (one ``reduceat`` over all words), mixed
    with its length. Equal words get equal codes in every text and every process.
    """
    cp = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    if len(cp) == 0:
        return np.zeros(0, dtype=np.uint64)
    mask = _word_mask(cp)
    edges = np.diff(mask.astype(np.int8), prepend=np.int8(0), append=np.int8(0))
    starts = np.flatnonzero(edges == 1)
    if len(starts) == 0:
        return np.zeros(0, dtype=np.uint64)
    ends = np.flatnonzero(edges == -1)
    powers, inv_powers = _powers(len(cp))
    pos = np.flatnonzero(mask)
    terms = cp[pos].astype(np.uint64) * inv_powers[pos]
    lengths = ends - starts
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    poly = np.add.reduceat(terms, offsets) * powers[ends - 1]
    return _mix64(poly ^ (lengths.astype(np.uint64) * _GOLD))


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard similarity of two sorted unique shingle arrays (0 when both are empty)."""
    if len(a) == 0 or len(b) == 0:
        return 0.0
    if len(a) > len(b):
        a, b = b, a
    pos = np.searchsorted(b, a)  # the smaller set probes the larger one: O(|a| log |b|), no sort
    pos[pos == len(b)] = 0
    inter = int(np.count_nonzero(b[pos] == a))
    return inter / (len(a) + len(b) - inter)


class MinHasher:
    """Vectorised MinHash signatures (uint32, ``num_perm`` per text).

    Args:
        num_perm: Number of hash functions (signature length).
        seed: Seed of the hash family.
        shingler: How texts become shingle sets.
        permutations: ``(2, num_perm)`` uint64 ``[a; b]`` to reuse a saved family (overrides ``seed``).
    """

    def __init__(
        self,
        num_perm: int = 128,
        seed: int = 1,
        shingler: Shingler | None = None,
        permutations: np.ndarray | None = None,
    ) -> None:
        if num_perm < 1:
            raise ValueError(f"num_perm must be positive, got {num_perm}")
        self.num_perm, self.seed = int(num_perm), int(seed)
        self.shingler = shingler or Shingler()
        if permutations is None:
            rng = np.random.default_rng(seed)
            a = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
            b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64) * np.uint64(2)
            permutations = np.stack([a, b])
        permutations = np.asarray(permutations, dtype=np.uint64)
        if permutations.shape != (2, num_perm):
            raise ValueError(f"permutations have shape {permutations.shape}, expected (2, {num_perm})")
        self.permutations = permutations

    def signatures_from_shingles(self, shingle_sets: Sequence[np.ndarray], chunk: int = 8192) -> np.ndarray:
        """Signatures ``(n, num_perm)`` uint32 of pre-computed shingle hashes (all-max rows for empty sets).

        Repeated hashes within a set do not change its signature, so `Shingler.hashes` output can be
        given as is.

        The shingles of all sets are hashed as one flat array, ``chunk`` shingles at a time into a
        reused permutation-major buffer, and reduced per set with ``np.minimum.reduceat``.
        """
        n = len(shingle_sets)
        sig = np.full((n, self.num_perm), EMPTY, dtype=np.uint32)
        if n == 0:
            return sig
        lengths = np.fromiter((len(s) for s in shingle_sets), dtype=np.int64, count=n)
        total = int(lengths.sum())
        if total == 0:
            return sig
        flat = np.concatenate([s for s in shingle_sets if len(s)]).astype(np.uint64, copy=False)
        x = (flat ^ (flat >> np.uint64(32))) & np.uint64(0xFFFFFFFF)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        nonempty = np.nonzero(lengths)[0]
        doc_starts = starts[nonempty]
        a = self.permutations[0][:, None]
        b = self.permutations[1][:, None]
        shift = np.uint64(32)
        # permutation-major (num_perm, chunk) buffer: reduceat then runs along contiguous rows
        buf = np.empty((self.num_perm, min(chunk, total)), dtype=np.uint64)
        for s in range(0, total, chunk):
            e = min(total, s + chunk)
            lo, hi = np.searchsorted(doc_starts, [s, e], side="left")
            inner = doc_starts[lo:hi]
            bounds = np.concatenate([[s], inner[inner > s]])
            docs = nonempty[np.searchsorted(doc_starts, bounds, side="right") - 1]
            h = buf[:, : e - s]
            np.multiply(a, x[None, s:e], out=h)
            h += b
            h >>= shift
            mins = np.minimum.reduceat(h, bounds - s, axis=1).T.astype(np.uint32)
            sig[docs] = np.minimum(sig[docs], mins)
        return sig

    def signatures(self, texts: Iterable[str], batch_size: int = 256, show_progress: bool = False) -> np.ndarray:
        """Signatures ``(n, num_perm)`` uint32 of ``texts``."""
        texts = list(texts)
        out = []
        bar = tqdm(total=len(texts), desc="minhash", unit="doc", disable=not show_progress)
        for start in range(0, len(texts), batch_size):
            batch = texts[start:start + batch_size]
            out.append(self.signatures_from_shingles([self.shingler.hashes(t) for t in batch]))
            bar.update(len(batch))
        bar.close()
        return np.concatenate(out) if out else np.zeros((0, self.num_perm), dtype=np.uint32)


def _gauss_nodes(a: float, b: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    x, w = np.polynomial.legendre.leggauss(n)
    return 0.5 * (b - a) * x + 0.5 * (b + a), 0.5 * (b - a) * w


@functools.lru_cache(maxsize=256)
def optimal_params(threshold: float, num_perm: int, weights: tuple[float, float] = (0.5, 0.5)) -> tuple[int, int]:
    """(bands, rows) minimising ``w_fp * FP + w_fn * FN`` for a Jaccard ``threshold`` (datasketch's objective).

    ``FP = integral_0^t P(s) ds`` and ``FN = integral_t^1 (1 - P(s)) ds`` with
    ``P(s) = 1 - (1 - s**r)**b``, over every ``b * r <= num_perm``; ties go to the smallest ``b``, then
    ``r``, as in datasketch.
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    if abs(sum(weights) - 1.0) > 1e-9 or min(weights) < 0:
        raise ValueError(f"weights must be non-negative and sum to 1, got {weights}")
    pairs = np.array([(b, r) for b in range(1, num_perm + 1) for r in range(1, num_perm // b + 1)], dtype=np.float64)
    bands, rows = pairs[:, :1], pairs[:, 1:]
    nodes = min(max(64, num_perm // 2 + 2), 512)
    s0, w0 = _gauss_nodes(0.0, threshold, nodes)
    s1, w1 = _gauss_nodes(threshold, 1.0, nodes)
    fp = (1.0 - (1.0 - s0[None, :] ** rows) ** bands) @ w0
    fn = ((1.0 - s1[None, :] ** rows) ** bands) @ w1
    err = weights[0] * fp + weights[1] * fn
    best = int(np.argmin(err))
    return int(pairs[best, 0]), int(pairs[best, 1])


def candidate_pairs_from_keys(keys: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """All pairs ``(i, j)``, ``i < j``, of rows sharing a key in at least one column of ``keys`` ``(n, bands)``.

    Returns an int64 array ``(n_pairs, 2)`` sorted and unique. Rows where ``valid`` is False are skipped.
    """
    n = len(keys)
    codes = []
    rows_all = np.arange(n, dtype=np.int64)
    if valid is not None:
        rows_all = rows_all[valid]
    for band in range(keys.shape[1]):
        col = keys[rows_all, band]
        order = np.argsort(col, kind="stable")
        sorted_keys = col[order]
        if len(sorted_keys) < 2:
            continue
        change = np.nonzero(sorted_keys[1:] != sorted_keys[:-1])[0] + 1
        starts = np.concatenate([[0], change])
        sizes = np.diff(np.concatenate([starts, [len(sorted_keys)]]))
        members = rows_all[order]
        for size in np.unique(sizes[sizes > 1]):
            group_starts = starts[sizes == size]
            iu, ju = np.triu_indices(int(size), k=1)
            a = members[group_starts[:, None] + iu[None, :]].ravel()
            b = members[group_starts[:, None] + ju[None, :]].ravel()
            lo, hi = np.minimum(a, b), np.maximum(a, b)
            codes.append(lo * n + hi)
    if not codes:
        return np.zeros((0, 2), dtype=np.int64)
    code = np.unique(np.concatenate(codes))
    return np.stack([code // n, code % n], axis=1)


class MinHashIndex:
    """MinHash LSH over texts, keyed by corpus ids, with the index-directory format of the vector indexes.

    Args:
        threshold: Jaccard threshold the banding is tuned for (and the default of `range_search`).
        num_perm: Signature length.
        bands, rows: Explicit banding (``bands * rows <= num_perm``); ``None`` derives it from
            ``threshold`` with `optimal_params`.
        shingle: ``"word"`` or ``"char"``.
        ngram: Shingle length.
        lowercase: Lower-case texts before shingling.
        seed: Seed of the hash family.
        weights: (false-positive, false-negative) weights of the banding objective.
    """

    kind: ClassVar[str] = "minhash"
    metric: ClassVar[str] = "jaccard"
    approximate: ClassVar[bool] = True

    def __init__(
        self,
        threshold: float = 0.2,
        num_perm: int = 128,
        bands: int | None = None,
        rows: int | None = None,
        shingle: str = "word",
        ngram: int = 2,
        lowercase: bool = True,
        seed: int = 1,
        weights: tuple[float, float] = (0.5, 0.5),
        permutations: np.ndarray | None = None,
    ) -> None:
        if not 0.0 < threshold < 1.0:
            raise IndexInputError(f"MinHash threshold must be in (0, 1), got {threshold}")
        if (bands is None) != (rows is None):
            raise IndexInputError("give both bands and rows, or neither")
        if bands is None:
            bands, rows = optimal_params(threshold, num_perm, tuple(weights))
        if bands < 1 or rows < 1 or bands * rows > num_perm:
            raise IndexInputError(f"bands x rows = {bands} x {rows} must be >= 1 and fit num_perm={num_perm}")
        self.threshold, self.bands, self.rows = float(threshold), int(bands), int(rows)
        self.weights = (float(weights[0]), float(weights[1]))
        self.hasher = MinHasher(num_perm, seed, Shingler(shingle, ngram, lowercase), permutations)
        self.model_id: str | None = None
        self.idmap = IdMap()
        self._signatures = ShardedArray(SIGNATURE_PREFIX, num_perm, np.uint32)
        self._key_shards: list[np.ndarray] = []  # band keys of the first len(_key_shards) signature shards
        self._keys_cache: np.ndarray | None = None
        self._removed = np.zeros(0, dtype=np.int64)
        self._live_cache: np.ndarray | None = None
        self._sorted: list[tuple[np.ndarray, np.ndarray]] | None = None

    # ------------------------------------------------------------------ properties
    @property
    def signatures(self) -> np.ndarray:
        """Every stored signature ``(rows, num_perm)`` uint32, removed rows included (shards joined on first use)."""
        return self._signatures.array()

    @property
    def _keys(self) -> np.ndarray:
        """Band keys ``(rows, bands)`` of every stored row, computed per shard on first use."""
        shards = self._signatures.shard_arrays()
        if len(self._key_shards) < len(shards) or self._keys_cache is None:
            for shard in shards[len(self._key_shards):]:
                self._key_shards.append(self.band_keys(np.asarray(shard)))
            self._keys_cache = (np.concatenate(self._key_shards) if self._key_shards
                                else np.zeros((0, self.bands), dtype=np.uint64))
        return self._keys_cache

    @property
    def _live(self) -> np.ndarray:
        """Rows that can be candidates: not removed, and not the signature of an empty text."""
        if self._live_cache is None or len(self._live_cache) != len(self._signatures):
            live = ~(self.signatures == EMPTY).all(axis=1)
            live[self._removed] = False
            self._live_cache = live
        return self._live_cache

    @property
    def num_perm(self) -> int:
        """Signature length."""
        return self.hasher.num_perm

    @property
    def dim(self) -> int:
        """Signature length (the manifest's ``dim``)."""
        return self.hasher.num_perm

    @property
    def shingler(self) -> Shingler:
        """The shingling scheme."""
        return self.hasher.shingler

    @property
    def count(self) -> int:
        """Number of live documents."""
        return len(self.idmap)

    def __len__(self) -> int:
        return self.count

    @property
    def ids(self) -> list[Any]:
        """Live ids in insertion order."""
        return self.idmap.ids()

    @property
    def parameters(self) -> dict[str, Any]:
        """Manifest parameters."""
        return {
            "threshold": self.threshold, "num_perm": self.num_perm, "bands": self.bands, "rows": self.rows,
            "shingle": self.shingler.to_json(), "seed": self.hasher.seed, "weights": list(self.weights),
        }

    # ------------------------------------------------------------------ building
    def band_keys(self, signatures: np.ndarray) -> np.ndarray:
        """64-bit bucket key of every band ``(n, bands)`` (rows of empty texts are keyed but never matched)."""
        sig = signatures.astype(np.uint64)
        keys = np.empty((len(sig), self.bands), dtype=np.uint64)
        for band in range(self.bands):
            h = np.full(len(sig), np.uint64(((band + 1) * int(_GOLD)) & _MASK64), dtype=np.uint64)
            for j in range(band * self.rows, (band + 1) * self.rows):
                h = _mix64(h ^ sig[:, j])
            keys[:, band] = h
        return keys

    def add(self, texts: Sequence[str], ids: Sequence[Any], show_progress: bool = False) -> None:
        """Shingle, sign and bucket ``texts`` under ``ids``."""
        texts = list(texts)
        if len(texts) != len(ids):
            raise IndexInputError(f"{len(texts)} texts but {len(ids)} ids")
        new_ids = self.idmap.check_new(list(ids))  # before the (costly) signatures
        self._append_signatures(self.hasher.signatures(texts, show_progress=show_progress), new_ids, checked=True)

    def add_signatures(self, signatures: np.ndarray, ids: Sequence[Any]) -> None:
        """Add pre-computed signatures (from this index's `hasher`) under ``ids``."""
        self._append_signatures(signatures, ids, checked=False)

    def _append_signatures(self, signatures: np.ndarray, ids: Sequence[Any], checked: bool) -> None:
        """`add_signatures`; ``checked``: ``ids`` come from ``idmap.check_new`` (not validated again)."""
        signatures = np.ascontiguousarray(signatures, dtype=np.uint32)
        if signatures.ndim != 2 or signatures.shape[1] != self.num_perm:
            raise IndexInputError(f"signatures have shape {signatures.shape}; need (n, {self.num_perm})")
        if len(signatures) != len(ids):
            raise IndexInputError(f"{len(signatures)} signatures but {len(ids)} ids")
        if len(ids) == 0:
            return
        self.idmap.append(list(ids), checked=checked)
        self._signatures.append(signatures)
        self._keys_cache = self._live_cache = None
        self._sorted = None

    def remove(self, ids: Sequence[Any]) -> int:
        """Remove ``ids``; returns how many were removed."""
        rows = self.idmap.remove(list(ids))
        self._removed = np.union1d(self._removed, rows)
        self._live_cache = None
        self._sorted = None
        return len(rows)

    # ------------------------------------------------------------------ querying
    def candidate_pairs(self) -> np.ndarray:
        """Row pairs ``(n_pairs, 2)`` (``i < j``) sharing at least one band bucket (live, non-empty rows)."""
        return candidate_pairs_from_keys(self._keys, self._live)

    def estimated_jaccard(self, rows_a: np.ndarray, rows_b: np.ndarray) -> np.ndarray:
        """Fraction of equal min-hashes between stored rows (an estimate of their Jaccard similarity)."""
        return (self.signatures[rows_a] == self.signatures[rows_b]).mean(axis=1)

    def _tables(self) -> list[tuple[np.ndarray, np.ndarray]]:
        if self._sorted is None:
            live = np.nonzero(self._live)[0]
            self._sorted = []
            for band in range(self.bands):
                col = self._keys[live, band]
                order = np.argsort(col, kind="stable")
                self._sorted.append((col[order], live[order]))
        return self._sorted

    def _query_candidates(self, signatures: np.ndarray) -> list[np.ndarray]:
        keys = self.band_keys(signatures)
        empty = (signatures == EMPTY).all(axis=1)
        found: list[list[np.ndarray]] = [[] for _ in range(len(signatures))]
        for band, (sorted_keys, rows) in enumerate(self._tables()):
            lo = np.searchsorted(sorted_keys, keys[:, band], side="left")
            hi = np.searchsorted(sorted_keys, keys[:, band], side="right")
            for q in np.nonzero(hi > lo)[0]:
                found[q].append(rows[lo[q]:hi[q]])
        return [np.unique(np.concatenate(f)) if f and not empty[q] else np.zeros(0, np.int64)
                for q, f in enumerate(found)]

    def range_search(self, texts: Sequence[str], threshold: float | None = None) -> RangeResult:
        """Candidates of each text with estimated Jaccard ``>= threshold`` (default: the index's), best first."""
        return self.range_search_signatures(self.hasher.signatures(list(texts)), threshold)

    def range_search_signatures(self, signatures: np.ndarray, threshold: float | None = None) -> RangeResult:
        """`range_search` for pre-computed signatures (e.g. `signatures_of` stored ids)."""
        threshold = self.threshold if threshold is None else float(threshold)
        sigs = np.asarray(signatures, dtype=np.uint32)
        lims, scores, rows, ids = [0], [], [], []
        for q, cand in enumerate(self._query_candidates(sigs)):
            est = (self.signatures[cand] == sigs[q]).mean(axis=1) if len(cand) else np.zeros(0)
            keep = est >= threshold
            cand, est = cand[keep], est[keep]
            order = np.lexsort((cand, -est))
            rows.append(cand[order])
            scores.append(est[order].astype(np.float32))
            lims.append(lims[-1] + len(order))
            ids.append([self.idmap.id_of(int(r)) for r in cand[order]])
        return RangeResult(
            np.asarray(lims, dtype=np.int64),
            np.concatenate(scores) if scores else np.zeros(0, np.float32),
            np.concatenate(rows) if rows else np.zeros(0, np.int64),
            ids,
        )

    def signatures_of(self, ids: Sequence[Any]) -> np.ndarray:
        """Stored signatures of ``ids``."""
        return self.signatures[self.idmap.rows_of(ids)]

    def search(self, texts: Sequence[str], k: int = 10) -> SearchResult:
        """Up to ``k`` bucket-sharing documents per text, by estimated Jaccard (no threshold)."""
        return self.search_signatures(self.hasher.signatures(list(texts)), k)

    def search_signatures(
        self, signatures: np.ndarray, k: int = 10, exclude: Sequence[Any] | None = None
    ) -> SearchResult:
        """`search` for pre-computed signatures; ``exclude[q]`` (an id or None) is dropped from q's hits."""
        res = self.range_search_signatures(signatures, threshold=0.0)
        n = len(res)
        scores = np.full((n, k), -np.inf, dtype=np.float32)
        rows = np.full((n, k), -1, dtype=np.int64)
        ids = []
        for q in range(n):
            s = res.scores[res.lims[q]:res.lims[q + 1]]
            r = res.rows[res.lims[q]:res.lims[q + 1]]
            if exclude is not None and exclude[q] is not None and exclude[q] in self.idmap:
                keep = r != self.idmap.rows_of([exclude[q]])[0]
                s, r = s[keep], r[keep]
            s, r = s[:k], r[:k]
            scores[q, :len(s)], rows[q, :len(r)] = s, r
            ids.append([self.idmap.id_of(int(x)) for x in r])
        return SearchResult(scores, rows, ids)

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path, overwrite: bool = False) -> Path:
        """Write the index directory atomically (signatures, hash family, ids)."""
        from reformer_retrieval.indexes.store import save_index

        return save_index(self, directory, overwrite=overwrite)

    @classmethod
    def load(cls, directory: str | Path) -> MinHashIndex:
        """Open a MinHash index directory."""
        from reformer_retrieval.indexes.store import open_index

        index = open_index(directory)
        if not isinstance(index, cls):
            raise IndexInputError(f"{directory} holds a {index.kind!r} index, not 'minhash'")
        return index

    def _write(self, directory: Path) -> list[str]:
        np.save(directory / PERMUTATIONS_FILE, self.hasher.permutations, allow_pickle=False)
        return [PERMUTATIONS_FILE, *self._signatures.write_all(directory)]

    def _write_append(self, directory: Path) -> tuple[list[str], list[str]]:
        """Write only the signature shards added since loading (or the last save) (see `store`)."""
        names, new = self._signatures.write_new(directory)
        return [PERMUTATIONS_FILE, *names], new

    def _forget_shard_names(self) -> None:
        self._signatures.forget_names()

    @classmethod
    def _read(cls, directory: Path, manifest: dict[str, Any]) -> MinHashIndex:
        p = manifest["parameters"]
        sh = p["shingle"]
        index = cls(
            threshold=p["threshold"], num_perm=p["num_perm"], bands=p["bands"], rows=p["rows"],
            shingle=sh["kind"], ngram=sh["n"], lowercase=sh["lowercase"], seed=p["seed"],
            weights=tuple(p["weights"]),
            permutations=np.load(directory / PERMUTATIONS_FILE, allow_pickle=False),
        )
        files = list(manifest.get("files", {}))
        names = ShardedArray.names_in(files, SIGNATURE_PREFIX)
        if SIGNATURES_FILE in files:
            names = [SIGNATURES_FILE, *names]
        try:
            index._signatures = ShardedArray.load(directory, names, SIGNATURE_PREFIX, index.num_perm, np.uint32)
        except ValueError as exc:
            raise IndexInputError(str(exc)) from exc
        return index

    def _after_load(self) -> None:
        live = self.idmap.live_mask()
        if len(live) != len(self._signatures):
            raise IndexInputError(
                f"the signature files hold {len(self._signatures)} rows but ids.parquet covers {len(live)}"
            )
        self._removed = np.nonzero(~live)[0].astype(np.int64)
        self._live_cache = None

