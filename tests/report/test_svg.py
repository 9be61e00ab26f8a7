"""The histogram and PR-curve SVGs: the threshold is a bin edge and the marker sits on it."""

from __future__ import annotations

import re

import numpy as np

from reformer_retrieval.report.svg import histogram_svg, pr_curve_svg


def _attr(svg: str, element_id: str, name: str) -> str:
    tag = re.search(rf'<[^>]*id="{element_id}"[^>]*>', svg).group(0)
    return re.search(rf'{name}="([^"]*)"', tag).group(1)


def test_histogram_marker_and_bins():
    above = np.array([0.91, 0.95, 0.99, 0.999, 0.93])
    below = np.array([0.82, 0.87, 0.899])
    svg = histogram_svg("cosine", above, below, 0.9, sampled_docs=17, bins=20)
    lo, hi = float(_attr(svg, "hist-cosine", "data-lo")), float(_attr(svg, "hist-cosine", "data-hi"))
    x0, x1 = float(_attr(svg, "hist-cosine", "data-x0")), float(_attr(svg, "hist-cosine", "data-x1"))
    marker = float(_attr(svg, "threshold-marker-cosine", "x1"))
    assert abs(marker - (x0 + (0.9 - lo) / (hi - lo) * (x1 - x0))) < 0.01
    assert float(_attr(svg, "threshold-marker-cosine", "data-threshold")) == 0.9
    bars = re.findall(r'<rect class="bar (run|near)"[^>]*data-lo="([^"]+)" data-hi="([^"]+)" data-count="(\d+)"', svg)
    assert sum(int(c) for k, *_, c in bars if k == "run") == 5
    assert sum(int(c) for k, *_, c in bars if k == "near") == 3
    for kind, a, b, _ in bars:  # no bin straddles the threshold
        assert float(b) <= 0.9 + 1e-9 or float(a) >= 0.9 - 1e-9
        assert (kind == "near") == (float(b) <= 0.9 + 1e-9)
    assert "17 sampled" in svg


def test_pr_curve_circles_the_run_threshold():
    svg = pr_curve_svg([(0.8, 1.0, 0.5), (0.9, 0.8, 1.0), (0.95, 0.4, 1.0)], 0.9, "cosine")
    assert _attr(svg, "pr-chosen", "data-threshold") == "0.9"
    assert float(_attr(svg, "pr-chosen", "data-recall")) == 0.8
    assert svg.count("<circle") == 3
