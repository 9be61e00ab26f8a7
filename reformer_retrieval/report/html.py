"""Render `ReportData` as one self-contained HTML file (inline CSS, script, SVG and data; no network).

The static parts (summary, charts) are HTML written here; the clusters and the near-threshold pairs are
JSON in ``<script type="application/json">`` blocks, the clusters split into chunks that the page's
script (``assets/report.js``) parses only when a page of clusters or a search needs them, so a page of
100K clusters opens as fast as one of 100.
"""

from __future__ import annotations

import hashlib
import json
from html import escape
from importlib import resources
from pathlib import Path
from typing import Any

from reformer_retrieval.report.gather import ReportData
from reformer_retrieval.report.svg import histogram_svg, pr_curve_svg

__all__ = ["render_html", "write_report"]

_SUMMARY_ROWS = (
    ("documents", "documents"),
    ("clusters", "clusters (singletons included)"),
    ("duplicate_clusters", "clusters with duplicates"),
    ("duplicates", "duplicates (documents beside a representative)"),
    ("largest_cluster", "largest cluster"),
    ("candidate_pairs", "candidate pairs"),
    ("verified_pairs", "verified pairs"),
    ("excluded_pairs", "pairs excluded by reviewer marks"),
    ("skipped_rows", "corpus rows skipped (empty text)"),
)


def _asset(name: str) -> str:
    return resources.files("reformer_retrieval.report").joinpath("assets", name).read_text(encoding="utf-8")


def _json_script(payload: Any, attrs: str) -> str:
    """A JSON ``<script>`` block; ``<`` is escaped so no text can close the element."""
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")
    return f'<script type="application/json" {attrs}>{text}</script>\n'


def _summary_html(data: ReportData) -> str:
    s = data.summary
    rows = []
    for key, label in _SUMMARY_ROWS:
        if s.get(key) is None:
            continue
        value = s[key]
        rows.append(f'<tr><th>{escape(label)}</th><td class="num" data-key="{key}" data-value="{escape(str(value))}">'
                    f"{value:,}</td></tr>")
    rows.append(f'<tr><th>method</th><td data-key="method">{escape(str(s.get("method")))}</td></tr>')
    for kind, t in (s.get("thresholds") or {}).items():
        rows.append(f'<tr><th>{escape(kind)} threshold</th><td class="num" data-key="threshold-{escape(kind)}" '
                    f'data-value="{t!r}">{t:g}</td></tr>')
    if s.get("index"):
        k = "" if s.get("k") is None else f" (k {s['k']})"
        rows.append(f'<tr><th>index</th><td data-key="index">{escape(str(s["index"]))}{k}</td></tr>')
    if s.get("minhash"):
        mh = s["minhash"]
        rows.append(f'<tr><th>MinHash</th><td data-key="minhash">{mh.get("num_perm")} permutations, '
                    f'{escape(str(mh.get("shingle")))} {mh.get("ngram")}-grams</td></tr>')
    rows.append(f'<tr><th>model id</th><td data-key="model_id">{escape(str(s.get("model_id") or "–"))}</td></tr>')
    rows.append(f'<tr><th>keep</th><td data-key="keep">{escape(str(s.get("keep")))}</td></tr>')
    seconds = s.get("seconds") or {}
    stages = "".join(f'<tr><th>{escape(k)}</th><td class="num" data-stage="{escape(k)}">{float(v):.2f} s</td></tr>'
                     for k, v in seconds.items())
    return (f'<section id="summary"><h2>Summary</h2><div class="charts"><table class="summary">{"".join(rows)}</table>'
            f'<table class="summary" id="stage-times"><tr><th colspan="2">time per stage</th></tr>{stages}</table>'
            "</div></section>\n")


def _scores_html(data: ReportData) -> str:
    boxes = []
    for h in data.histograms:
        kind = h["kind"]
        n_above = len(data.near[kind]["above"])
        n_below = len(data.near[kind]["below"])
        boxes.append(
            f'<div class="chart-box">{histogram_svg(kind, h["above"], h["below"], h["threshold"], h["sampled_docs"])}'
            f'<div class="toolbar"><button type="button" class="near-btn" data-kind="{kind}" data-side="above" '
            f'id="near-above-{kind}">{n_above} pairs just above the threshold</button>'
            f'<button type="button" class="near-btn" data-kind="{kind}" data-side="below" id="near-below-{kind}">'
            f'{n_below} pairs just below</button></div><div class="near-list" id="near-{kind}"></div></div>')
    if not boxes:
        return ""
    return (f'<section id="scores"><h2>Scores of the pairs</h2><p class="note">Where the threshold is judged: open the '
            f"pairs on either side of it and mark them.</p><div class=\"charts\">{''.join(boxes)}</div></section>\n")


def _pr_html(data: ReportData) -> str:
    pr = data.pr
    if pr is None:
        return ""
    c = pr["chosen"]
    return (f'<section id="pr"><h2>Precision and recall against the labels</h2>'
            f'<p id="pr-chosen-text">At the run\'s {escape(pr["kind"])} threshold {pr["threshold"]:g}: precision '
            f'<span data-key="pr-precision">{c["precision"]:.4f}</span>, recall <span data-key="pr-recall">'
            f'{c["recall"]:.4f}</span>, F1 {c["f1"]:.4f}. Points below the threshold count only the pairs found among '
            f'{pr["sampled_below"]:,} sampled documents (their recall is a lower bound).</p>'
            f'{pr_curve_svg(pr["points"], pr["threshold"], pr["kind"])}</section>\n')


def _clusters_html(data: ReportData) -> str:
    shown = len(data.clusters)
    extra = ""
    if shown < data.duplicate_clusters:
        extra = (f" Showing {shown:,} of {data.duplicate_clusters:,} clusters with duplicates "
                 "(--max-clusters / --sample).")
    return ('<section id="clusters"><h2>Clusters, largest first</h2>'
            f'<p class="note">Each member with its score to the representative and an inline diff against it '
            f"(inserted words green, deleted red, long equal runs folded). Weakest members first.{escape(extra)}</p>"
            '<div class="toolbar"><input type="search" id="cluster-search" placeholder="document id or cluster id" '
            'aria-label="search clusters by id"><button type="button" id="search-btn">search</button>'
            '<button type="button" id="prev-page">previous</button><button type="button" id="next-page">next</button>'
            '<span id="page-info" class="muted"></span></div><div id="cluster-list"></div></section>\n')


def render_html(data: ReportData, chunk_clusters: int = 200) -> str:
    """The page's HTML text."""
    key = hashlib.sha256(json.dumps([data.out_dir, data.summary], sort_keys=True, default=str).encode()).hexdigest()[:16]
    title = f"Dedup review: {Path(data.out_dir).name or data.out_dir}"
    notes = "".join(f'<p class="note">{escape(n)}</p>' for n in data.notes)
    header = (f"<header><h1>{escape(title)}</h1><p class=\"muted\">{escape(data.out_dir)}"
              f"{' · texts from ' + escape(data.corpus) if data.corpus else ''}</p>{notes}</header>\n")
    body = header + _summary_html(data) + _scores_html(data) + _pr_html(data) + _clusters_html(data)
    meta = {
        "key": key, "chunk_clusters": chunk_clusters, "shown_clusters": len(data.clusters),
        "thresholds": data.summary.get("thresholds") or {},
    }
    blocks = [_json_script(meta, 'id="rr-meta"'), _json_script(data.near, 'id="rr-near"')]
    for i in range(0, len(data.clusters), chunk_clusters):
        blocks.append(_json_script(data.clusters[i:i + chunk_clusters], f'class="rr-chunk" data-index="{i // chunk_clusters}"'))
    page = _asset("report.html")
    for marker, text in (("<!--RR:TITLE-->", escape(title)), ("<!--RR:CSS-->", _asset("report.css")),
                         ("<!--RR:BODY-->", body), ("<!--RR:DATA-->", "".join(blocks)), ("<!--RR:JS-->", _asset("report.js"))):
        page = page.replace(marker, text, 1)
    return page


def write_report(data: ReportData, path: str | Path, chunk_clusters: int = 200) -> Path:
    """Write the page atomically; returns its path."""
    from reformer_retrieval.atomic import atomic_write_text

    path = Path(path)
    atomic_write_text(path, render_html(data, chunk_clusters))
    return path
