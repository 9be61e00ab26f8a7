"""Sign-LSH parameters from a cosine threshold: the recall formula, its inverse, the derived settings."""

from __future__ import annotations

import math

import pytest
from reformer_retrieval.indexes.lsh_params import (
    lsh_params,
    lsh_recall,
    min_cosine,
    probes,
    table_probability,
    tables_needed,
)


def test_table_probability_is_the_binomial_ball():
    # cosine 0: each bit differs with probability 1/2; a 16-bit table within one flip: 17 / 2**16
    assert table_probability(0.0, 16, 1) == pytest.approx(17 / 2**16)
    assert table_probability(0.0, 16, 2) == pytest.approx((1 + 16 + 120) / 2**16)
    q = 1 - math.acos(0.41) / math.pi  # Charikar: same side of a random hyperplane
    assert table_probability(0.41, 10, 0) == pytest.approx(q**10)
    assert table_probability(1.0, 30, 0) == 1.0 and probes(16, 2) == 137


def test_old_defaults_recall_at_the_dedup_threshold():
    """8 tables x 16 bits with one flip find a pair at cosine 0.41 with probability about 0.055."""
    assert lsh_recall(0.41, 8, 16, 1) == pytest.approx(0.055, abs=0.001)
    assert min_cosine(8, 16, 1) == pytest.approx(0.936, abs=0.001)


@pytest.mark.parametrize("threshold", [0.41, 0.48, 0.7, 0.9, 0.95])
@pytest.mark.parametrize("n", [10_000, 1_000_000])
def test_derived_settings_reach_the_recall_within_the_table_cap(threshold, n):
    p = lsh_params(threshold, 0.99, n=n, max_tables=64)
    assert p.recall == pytest.approx(lsh_recall(threshold, p.n_tables, p.bits_per_table, p.nflip))
    assert p.recall >= 0.99 and p.n_tables <= 64 and (p.n_tables * p.bits_per_table) % 8 == 0
    assert min_cosine(p.n_tables, p.bits_per_table, p.nflip) <= threshold
    # the fewest tables for those bits (up to the multiple-of-8 rounding)
    assert p.n_tables == tables_needed(threshold, p.bits_per_table, p.nflip)
    assert p.background_rate == pytest.approx(lsh_recall(0.0, p.n_tables, p.bits_per_table, p.nflip))


def test_higher_thresholds_are_more_selective():
    rates = [lsh_params(t).background_rate for t in (0.41, 0.6, 0.8, 0.95)]
    assert rates == sorted(rates, reverse=True) and rates[-1] < 1e-3


def test_impossible_or_bad_requests_refused():
    with pytest.raises(ValueError, match="use an exact"):
        lsh_params(0.1, 0.99, max_tables=2)
    with pytest.raises(ValueError, match="recall"):
        lsh_params(0.5, 1.0)
    with pytest.raises(ValueError, match="cosine"):
        lsh_params(1.5)
