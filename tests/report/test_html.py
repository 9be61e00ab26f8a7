"""The review page in headless Chromium, checked through the DOM (see conftest.py for the browser)."""

from __future__ import annotations

import json
import re
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from reformer_retrieval.marks import read_marks
from reformer_retrieval.report import ReportOptions, gather_report, render_html, write_report


@pytest.fixture(scope="module")
def page(review_run, tmp_path_factory):
    """The review run's page (with labels), written once."""
    data = gather_report(review_run["out"], labels="cluster")
    return write_report(data, tmp_path_factory.mktemp("page") / "report.html")


def _open(chromium, path):
    chromium.open(path.resolve().as_uri())
    assert chromium.js("document.body.dataset.ready") == "1"


def test_page_is_self_contained(page):
    html = page.read_text()
    assert not re.search(r"""(src|href)=["']https?:""", html)
    assert "@import" not in html and "url(http" not in html


def test_summary_numbers_equal_summary_json(chromium, page, review_run):
    _open(chromium, page)
    summary = json.loads((review_run["out"] / "summary.json").read_text())
    for key in ("documents", "clusters", "duplicate_clusters", "duplicates", "verified_pairs", "candidate_pairs"):
        text = chromium.js(f"document.querySelector('[data-key={key}]').textContent")
        assert int(text.replace(",", "")) == summary[key], key
    assert chromium.js("document.querySelector('[data-key=method]').textContent") == summary["method"]
    assert chromium.js("document.querySelector('[data-key=model_id]').textContent") == summary["model_id"]
    stages = chromium.js("Array.from(document.querySelectorAll('[data-stage]')).map(e => e.dataset.stage)")
    assert set(stages) == set(summary["seconds"])
    assert chromium.errors() == []


def test_largest_cluster_lists_its_members_and_diff_highlights_planted_word(chromium, page, review_run):
    _open(chromium, page)
    first = chromium.js("""(() => { const d = document.querySelector('details.cluster');
        return {size: +d.dataset.size, open: d.open,
                members: Array.from(d.querySelectorAll('.pair.member')).map(r => JSON.parse(r.dataset.idB))}; })()""")
    assert first["size"] == max(review_run["groups"]) and first["open"]
    assert sorted(first["members"]) == ["g0-1", "g0-2", "g0-3"]
    chromium.js("""(() => { const row = Array.from(document.querySelectorAll('.pair.member'))
        .find(r => JSON.parse(r.dataset.idB) === 'g0-1');
        if (!row.querySelector('.diff')) row.querySelector('.show-diff').click(); })()""")
    inserted = chromium.js("""Array.from(Array.from(document.querySelectorAll('.pair.member'))
        .find(r => JSON.parse(r.dataset.idB) === 'g0-1').querySelectorAll('.diff ins')).map(e => e.textContent.trim())""")
    assert inserted == [review_run["planted"]]
    assert chromium.errors() == []


def test_threshold_marker_sits_at_the_threshold(chromium, page, review_run):
    _open(chromium, page)
    for kind, t in (("cosine", review_run["threshold"]), ("jaccard", review_run["jaccard"])):
        got = chromium.js(f"""(() => {{ const s = document.getElementById('hist-{kind}');
            const m = document.getElementById('threshold-marker-{kind}');
            const box = s.getBoundingClientRect(), mb = m.getBoundingClientRect();
            return {{lo: +s.dataset.lo, hi: +s.dataset.hi, x0: +s.dataset.x0, x1: +s.dataset.x1, t: +m.dataset.threshold,
                     screen: (mb.left + mb.right) / 2 - box.left, scale: box.width / s.viewBox.baseVal.width}}; }})()""")
        assert got["t"] == t
        expected = got["x0"] + (t - got["lo"]) / (got["hi"] - got["lo"]) * (got["x1"] - got["x0"])
        assert abs(got["screen"] / got["scale"] - expected) < 1.5, (kind, got)
    assert chromium.errors() == []


def test_pairs_near_the_threshold_one_click_away(chromium, page, review_run):
    _open(chromium, page)
    t = review_run["threshold"]
    chromium.js("document.getElementById('near-below-cosine').click()")
    below = chromium.js("Array.from(document.querySelectorAll('#near-cosine .near-pair')).map(r => [JSON.parse(r.dataset.idA), JSON.parse(r.dataset.idB), r.querySelector('.scores').textContent])")
    assert ["near-a", "near-b"] in [b[:2] for b in below]
    assert all(float(re.search(r"cosine ([\d.]+)", b[2]).group(1)) < t for b in below)
    chromium.js("document.getElementById('near-above-cosine').click()")
    above = chromium.js("Array.from(document.querySelectorAll('#near-cosine .near-pair .scores')).map(e => e.textContent)")
    assert above and all(float(re.search(r"cosine ([\d.]+)", s).group(1)) >= t for s in above)
    assert chromium.errors() == []


def test_search_by_id(chromium, page):
    _open(chromium, page)
    chromium.js("document.getElementById('cluster-search').value = 'g3-1'; document.getElementById('search-btn').click()")
    shown = chromium.js("Array.from(document.querySelectorAll('details.cluster')).map(d => d.querySelector('summary .doc-id').textContent)")
    assert shown == ["g3-0"]
    assert chromium.js("JSON.parse(document.querySelector('.pair.hit').dataset.idB)") == "g3-1"
    assert chromium.errors() == []


def test_mark_and_export_gives_that_pair(chromium, page):
    _open(chromium, page)
    chromium.js("""(() => { const row = Array.from(document.querySelectorAll('.pair.member'))
        .find(r => JSON.parse(r.dataset.idB) === 'g0-2'); row.querySelector('.mark-not').click(); })()""")
    assert chromium.js("document.getElementById('marks-count').textContent") == "1 pair marked"
    for fmt in ("jsonl", "csv"):
        since = len(chromium.events)
        target = chromium.downloads / f"marks.{fmt}"
        target.unlink(missing_ok=True)
        chromium.js(f"document.getElementById('export-{fmt}').click()")
        path = chromium.wait_download(f"marks.{fmt}", since)
        deadline = time.monotonic() + 10
        while not path.is_file() and time.monotonic() < deadline:
            time.sleep(0.05)
        marks = read_marks(path)
        assert [(m.id_a, m.id_b, m.mark, m.merged) for m in marks] == [("g0-0", "g0-2", "not_duplicate", True)]
    chromium.js("document.getElementById('clear-marks').click()")
    assert chromium.errors() == []


def _synthetic_run(root, n_clusters: int):
    """A run directory with ``n_clusters`` clusters of two short documents (plus its corpus)."""
    n = 2 * n_clusters
    ids = [f"d{i:06d}" for i in range(n)]
    cluster = np.repeat(np.arange(n_clusters), 2)
    rep = np.tile([True, False], n_clusters)
    words = [f"w{i}" for i in range(500)]
    picks = np.random.default_rng(0).integers(0, len(words), (n_clusters, 12)).tolist()
    base = [" ".join(words[j] for j in row) for row in picks]
    texts = [t for b in base for t in (b, b + " extra")]
    root.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": ids, "text": texts}), root / "corpus.parquet")
    out = root / "out"
    out.mkdir()
    pq.write_table(pa.table({"id": ids, "cluster_id": cluster, "cluster_size": np.full(n, 2), "is_representative": rep,
                             "max_score": np.full(n, 0.95, np.float32)}), out / "clusters.parquet")
    score = pa.array(np.full(n_clusters, 0.95, np.float32))
    pq.write_table(pa.table({"id_a": ids[0::2], "id_b": ids[1::2], "score": score, "method": ["embedding"] * n_clusters,
                             "cosine": score, "jaccard": pa.nulls(n_clusters, pa.float32())}), out / "pairs.parquet")
    summary = {"documents": n, "clusters": n_clusters, "duplicate_clusters": n_clusters, "duplicates": n_clusters,
               "largest_cluster": 2, "method": "embedding", "thresholds": {"cosine": 0.9}, "verified_pairs": n_clusters,
               "candidate_pairs": n_clusters, "seconds": {"total": 1.0}, "model_id": "synthetic", "keep": "first",
               "corpus": {"path": str(root / "corpus.parquet"), "id_column": "id", "text_column": "text"}}
    (out / "summary.json").write_text(json.dumps(summary))
    return out


@pytest.mark.slow
def test_100k_clusters_load_under_3_seconds(chromium, tmp_path):
    out = _synthetic_run(tmp_path / "big", 100_000)
    data = gather_report(out, options=ReportOptions(max_clusters=100_000))
    path = tmp_path / "big.html"
    path.write_text(render_html(data))
    per_cluster = path.stat().st_size / 100_000
    start = time.perf_counter()
    _open(chromium, path)
    wall = time.perf_counter() - start
    load_ms = chromium.js("performance.getEntriesByType('navigation')[0].loadEventEnd")
    print(f"100K clusters: {path.stat().st_size / 1e6:.1f} MB ({per_cluster:.0f} bytes per cluster), "
          f"load event {load_ms:.0f} ms, open {wall:.2f} s")
    assert wall < 3.0 and load_ms < 3000
    assert chromium.js("document.querySelectorAll('details.cluster').length") == 50
    assert chromium.js("document.getElementById('page-info').textContent").endswith("of 100,000")
    start = time.perf_counter()
    chromium.js("document.getElementById('cluster-search').value = 'd199999'; document.getElementById('search-btn').click()")
    assert chromium.js("document.querySelector('details.cluster').dataset.clusterId") == "99999"
    assert time.perf_counter() - start < 3.0
    chromium.js("document.getElementById('next-page').click()")
    assert chromium.js("document.querySelector('details.cluster').dataset.clusterId") == "50"
    assert chromium.errors() == []
