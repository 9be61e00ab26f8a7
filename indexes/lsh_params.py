"""Sign-random-projection (SimHash) LSH parameters from a cosine threshold and a recall target.

For two unit vectors at cosine ``s`` (angle ``theta = arccos(s)``) one random hyperplane puts them on
the same side with probability ``q = 1 - theta / pi`` (Charikar 2002). A table hashes ``b`` such bits;
probing every bucket within ``nflip`` bit flips of the query's (multi-probe, the Hamming ball FAISS
``IndexBinaryMultiHash`` enumerates) makes the pair collide in that table with probability

    P_table(s) = sum_{i <= nflip} C(b, i) (1 - q)^i q^(b - i)

and with ``L`` independent tables it becomes a candidate with probability

    recall(s) = 1 - (1 - P_table(s))^L.

`lsh_recall` computes that; `min_cosine` inverts it (the lowest cosine found with a given recall);
`lsh_params` picks ``(L, b, nflip)`` reaching ``recall`` at ``threshold`` at the least expected work
per query, modelled as ``L * (probes + n * P_table(background))``: bucket look-ups (``probes =
sum_{i <= nflip} C(b, i)`` per table) plus the stored vectors of an unrelated population (cosine
``background``, 0 by default) that collide in some table and must be re-scored. ``L`` is capped
(``max_tables``: every table holds one entry per vector) and ``L * b`` is a multiple of 8 (packed codes).

At low thresholds sign LSH cannot be selective: at cosine 0.41 and recall 0.99, within 64 tables,
40-50% of unrelated pairs (cosine 0) still become candidates, so an exact (``flat``) range search is
usually as fast there. `LSHParams.background_rate` reports that fraction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["DEFAULT_RECALL", "LSHParams", "lsh_params", "lsh_recall", "min_cosine", "table_probability"]

#: Recall at the threshold every derived or accepted LSH setting must reach.
DEFAULT_RECALL = 0.99
#: Largest code length per table (FAISS ``IndexBinaryMultiHash`` keys are 64-bit).
MAX_BITS = 64


def _check_cosine(cosine: float) -> float:
    if not -1.0 <= cosine <= 1.0 or math.isnan(cosine):
        raise ValueError(f"a cosine must be in [-1, 1], got {cosine}")
    return float(cosine)


def table_probability(cosine: float, bits_per_table: int, nflip: int = 0) -> float:
    """Probability that a pair at ``cosine`` lands within ``nflip`` bit flips in one ``bits_per_table``-bit table."""
    cosine = _check_cosine(cosine)
    if bits_per_table < 1 or nflip < 0:
        raise ValueError(f"need bits_per_table >= 1 and nflip >= 0, got {bits_per_table}, {nflip}")
    p = math.acos(cosine) / math.pi  # a bit differs
    b = bits_per_table
    return min(1.0, sum(math.comb(b, i) * p**i * (1.0 - p) ** (b - i) for i in range(min(nflip, b) + 1)))


def lsh_recall(cosine: float, n_tables: int, bits_per_table: int, nflip: int = 0) -> float:
    """Probability that a stored vector at ``cosine`` to the query becomes a candidate."""
    if n_tables < 1:
        raise ValueError(f"n_tables must be >= 1, got {n_tables}")
    p = table_probability(cosine, bits_per_table, nflip)
    return 1.0 if p >= 1.0 else -math.expm1(n_tables * math.log1p(-p))  # 1 - (1 - p)^L, exact for tiny p


def min_cosine(n_tables: int, bits_per_table: int, nflip: int = 0, recall: float = DEFAULT_RECALL) -> float:
    """The lowest cosine at which these settings find a pair with probability ``>= recall`` (bisection)."""
    lo, hi = -1.0, 1.0
    if lsh_recall(lo, n_tables, bits_per_table, nflip) >= recall:
        return lo
    for _ in range(60):  # recall is increasing in the cosine
        mid = 0.5 * (lo + hi)
        if lsh_recall(mid, n_tables, bits_per_table, nflip) >= recall:
            hi = mid
        else:
            lo = mid
    return hi


def probes(bits_per_table: int, nflip: int) -> int:
    """Buckets probed per table: the Hamming ball of radius ``nflip`` around the query's key."""
    return sum(math.comb(bits_per_table, i) for i in range(min(nflip, bits_per_table) + 1))


@dataclass(frozen=True)
class LSHParams:
    """A sign-LSH setting and what it achieves.

    Attributes:
        n_tables: Hash tables (``L``).
        bits_per_table: Bits per table (``b``).
        nflip: Bit flips probed per table.
        threshold: Cosine the setting was sized for.
        recall: Probability of finding a pair at ``threshold`` (`lsh_recall`).
        background_rate: Probability that a pair at the background cosine becomes a candidate.
    """

    n_tables: int
    bits_per_table: int
    nflip: int
    threshold: float
    recall: float
    background_rate: float


def tables_needed(cosine: float, bits_per_table: int, nflip: int, recall: float = DEFAULT_RECALL) -> int:
    """The fewest tables reaching ``recall`` at ``cosine`` (``L * b`` rounded up to a multiple of 8 bits)."""
    p = table_probability(cosine, bits_per_table, nflip)
    if p >= 1.0:
        n = 1
    elif p <= 0.0:
        return math.inf  # type: ignore[return-value]
    else:
        n = max(1, math.ceil(math.log1p(-recall) / math.log1p(-p)))
        if -math.expm1(n * math.log1p(-p)) < recall:  # rounding in the division
            n += 1
    while (n * bits_per_table) % 8:
        n += 1
    return n


def lsh_params(
    threshold: float,
    recall: float = DEFAULT_RECALL,
    n: int = 100_000,
    max_tables: int = 64,
    nflips: tuple[int, ...] = (0, 1, 2),
    background: float = 0.0,
) -> LSHParams:
    """The cheapest ``(n_tables, bits_per_table, nflip)`` finding pairs at ``threshold`` with ``recall``.

    Args:
        threshold: Cosine the pairs of interest reach (e.g. the dedup threshold).
        recall: Required probability of finding a pair at ``threshold`` (pairs above it are found more often).
        n: Expected number of stored vectors (weighs re-scoring against bucket probes).
        max_tables: Most tables allowed (memory: one bucket entry per vector per table).
        nflips: Bit-flip radii to consider.
        background: Cosine of an unrelated pair, for the cost model.

    Raises:
        ValueError: For a threshold or recall out of range, or when no setting within ``max_tables``
            reaches the recall.
    """
    threshold = _check_cosine(threshold)
    if not 0.0 < recall < 1.0:
        raise ValueError(f"recall must be in (0, 1), got {recall}")
    if max_tables < 1 or n < 1:
        raise ValueError(f"need max_tables >= 1 and n >= 1, got {max_tables}, {n}")
    best: tuple[float, LSHParams] | None = None
    for nflip in nflips:
        for bits in range(max(1, nflip + 1), MAX_BITS + 1):
            tables = tables_needed(threshold, bits, nflip, recall)
            if tables > max_tables:
                continue
            per_table = table_probability(background, bits, nflip)
            cost = tables * (probes(bits, nflip) + n * per_table)
            if best is None or cost < best[0]:
                params = LSHParams(
                    tables, bits, nflip, threshold, lsh_recall(threshold, tables, bits, nflip),
                    lsh_recall(background, tables, bits, nflip),
                )
                best = (cost, params)
    if best is None:
        raise ValueError(
            f"no sign-LSH setting with at most {max_tables} tables finds pairs at cosine {threshold:g} with "
            f"recall {recall:g}; use an exact (flat) index"
        )
    return best[1]
