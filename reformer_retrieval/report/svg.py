"""Inline SVG charts of the review page: the score histogram with its threshold, and the PR curve.

Drawn here, in Python, as static markup (no script, no external file): the page shows them even with
scripts off, and the tests read positions straight from the DOM. Every chart carries its scale as
``data-`` attributes (``data-lo``, ``data-hi``: score range; ``data-x0``, ``data-x1``: its pixels).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

import numpy as np

__all__ = ["histogram_svg", "pr_curve_svg"]

_W, _H = 640, 230
_LEFT, _RIGHT, _TOP, _BOTTOM = 52, 16, 14, 40


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def _bin_edges(values: np.ndarray, threshold: float, bins: int) -> np.ndarray:
    """Equal-width edges over the values and the threshold, one edge exactly at the threshold."""
    lo = float(min(values.min(), threshold)) if len(values) else threshold - 0.05
    hi = float(max(values.max(), threshold)) if len(values) else threshold + 0.05
    if hi - lo < 1e-6:
        lo, hi = lo - 0.05, hi + 0.05
    width = (hi - lo) / bins
    below = max(1, math.ceil((threshold - lo) / width - 1e-9))
    above = max(1, math.ceil((hi - threshold) / width - 1e-9) + (1 if hi >= threshold else 0))
    return threshold + width * np.arange(-below, above + 1)


def histogram_svg(
    kind: str, above: Sequence[float], below: Sequence[float], threshold: float, sampled_docs: int,
    bins: int = 40,
) -> str:
    """An SVG histogram of pair scores of one kind (``cosine`` or ``jaccard``), the threshold drawn on it.

    Args:
        kind: The score's name (element ids: ``hist-{kind}``, ``threshold-marker-{kind}``).
        above: Scores of the run's pairs (``pairs.parquet``; may include pairs below this kind's
            threshold that passed the other test in a hybrid run).
        below: Scores of the sampled pairs below the threshold (`reformer_retrieval.report.near`).
        threshold: The run's threshold of this kind.
        sampled_docs: Documents the pairs below were sampled from (for the legend).
        bins: About this many bins over the range (one edge at the threshold).

    Bar heights are on a log scale (``log(1 + count)``), since pairs pile up near 1.0.
    """
    run = np.asarray(above, dtype=np.float64)
    near = np.asarray(below, dtype=np.float64)
    values = np.concatenate([run, near])
    edges = _bin_edges(values, threshold, bins)
    lo, hi = float(edges[0]), float(edges[-1])
    x0, x1 = _LEFT, _W - _RIGHT
    y0, y1 = _H - _BOTTOM, _TOP

    def x(v: float) -> float:
        return x0 + (v - lo) / (hi - lo) * (x1 - x0)

    c_run = np.histogram(run, edges)[0] if len(run) else np.zeros(len(edges) - 1, int)
    c_near = np.histogram(near, edges)[0] if len(near) else np.zeros(len(edges) - 1, int)
    top = math.log1p(max(1, int((c_run + c_near).max())))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart hist" id="hist-{kind}" viewBox="0 0 {_W} {_H}" '
             f'width="{_W}" height="{_H}" data-lo="{lo!r}" data-hi="{hi!r}" data-x0="{x0}" data-x1="{x1}" '
             f'role="img" aria-label="{escape(kind)} score histogram">']
    for tick in np.linspace(lo, hi, 6):
        parts.append(f'<line class="tick" x1="{x(tick):.2f}" x2="{x(tick):.2f}" y1="{y0}" y2="{y0 + 4}"/>'
                     f'<text class="axis" x="{x(tick):.2f}" y="{y0 + 16}" text-anchor="middle">{tick:.3f}</text>')
    parts.append(f'<line class="axis-line" x1="{x0}" x2="{x1}" y1="{y0}" y2="{y0}"/>')
    for i in range(len(edges) - 1):
        a, b = float(edges[i]), float(edges[i + 1])
        total = int(c_run[i] + c_near[i])
        if not total:
            continue
        height = max(1.0, math.log1p(total) / top * (y0 - y1))  # split between the two kinds by count
        base = float(y0)
        for count, cls, what in ((int(c_run[i]), "run", "run pairs"), (int(c_near[i]), "near", "sampled pairs below")):
            if not count:
                continue
            h = height * count / total
            base -= h
            parts.append(f'<rect class="bar {cls}" x="{x(a) + 0.5:.2f}" y="{base:.2f}" '
                         f'width="{max(x(b) - x(a) - 1, 1):.2f}" height="{h:.2f}" data-lo="{a:.6f}" '
                         f'data-hi="{b:.6f}" data-count="{count}"><title>{a:.4f} to {b:.4f}: {count:,} {what}'
                         f'</title></rect>')
    tx = x(threshold)
    parts.append(f'<line class="threshold-marker" id="threshold-marker-{kind}" data-threshold="{threshold!r}" '
                 f'x1="{tx:.3f}" x2="{tx:.3f}" y1="{y1 - 4}" y2="{y0}"/>')
    anchor = "end" if tx > (x0 + x1) / 2 else "start"
    dx = -4 if anchor == "end" else 4
    parts.append(f'<text class="threshold-label" x="{tx + dx:.2f}" y="{y1 + 8}" text-anchor="{anchor}">'
                 f'threshold {_fmt(threshold)}</text>')
    parts.append(f'<text class="axis" x="{(x0 + x1) / 2}" y="{_H - 6}" text-anchor="middle">{escape(kind)} '
                 f'(bars: log count; blue: the run\'s pairs, grey: pairs below, from {sampled_docs:,} sampled '
                 f'documents)</text>')
    parts.append("</svg>")
    return "".join(parts)


def pr_curve_svg(points: Sequence[tuple[float, float, float]], chosen: float, kind: str) -> str:
    """An SVG precision-recall curve over thresholds, the run's threshold circled.

    Args:
        points: ``(threshold, recall, precision)`` per threshold.
        chosen: The run's threshold (a point of ``points``).
        kind: The swept score's name (axis label).
    """
    x0, x1 = _LEFT, _W - _RIGHT
    y0, y1 = _H - _BOTTOM, _TOP
    pts = sorted(points, key=lambda p: p[0])

    def xy(recall: float, precision: float) -> tuple[float, float]:
        return x0 + recall * (x1 - x0), y0 - precision * (y0 - y1)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart pr" id="pr-curve" viewBox="0 0 {_W} {_H}" '
             f'width="{_W}" height="{_H}" data-x0="{x0}" data-x1="{x1}" role="img" aria-label="precision-recall curve">']
    for v in (0, 0.25, 0.5, 0.75, 1.0):
        gx, _ = xy(v, 0)
        _, gy = xy(0, v)
        parts.append(f'<line class="grid" x1="{gx:.1f}" x2="{gx:.1f}" y1="{y0}" y2="{y1}"/>'
                     f'<text class="axis" x="{gx:.1f}" y="{y0 + 16}" text-anchor="middle">{v:g}</text>'
                     f'<line class="grid" x1="{x0}" x2="{x1}" y1="{gy:.1f}" y2="{gy:.1f}"/>'
                     f'<text class="axis" x="{x0 - 6}" y="{gy + 4:.1f}" text-anchor="end">{v:g}</text>')
    line = " ".join(f"{a:.2f},{b:.2f}" for a, b in (xy(r, p) for _, r, p in pts))
    parts.append(f'<polyline class="pr-line" points="{line}"/>')
    for t, r, p in pts:
        cx, cy = xy(r, p)
        cls = "pr-point chosen" if abs(t - chosen) < 1e-9 else "pr-point"
        extra = ' id="pr-chosen"' if "chosen" in cls else ""
        parts.append(f'<circle class="{cls}"{extra} cx="{cx:.2f}" cy="{cy:.2f}" r="{6 if extra else 3}" '
                     f'data-threshold="{t!r}" data-recall="{r:.6f}" data-precision="{p:.6f}">'
                     f'<title>{kind} &gt;= {t:.4f}: precision {p:.3f}, recall {r:.3f}</title></circle>')
    parts.append(f'<text class="axis" x="{(x0 + x1) / 2}" y="{_H - 6}" text-anchor="middle">pairwise recall '
                 f'(y: precision; one point per {escape(kind)} threshold, the run\'s circled)</text>')
    parts.append("</svg>")
    return "".join(parts)
