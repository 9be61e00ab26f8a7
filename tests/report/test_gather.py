"""What the page shows: clusters largest first, member scores and diffs, near pairs, the PR curve, bounds."""

from __future__ import annotations

import pytest

from reformer_retrieval.report import ReportOptions, gather_report


def test_clusters_members_scores_and_diffs(review_run):
    data = gather_report(review_run["out"])  # texts from the corpus the run recorded
    assert data.texts_available and data.corpus == str(review_run["corpus"].resolve())
    assert [c[1] for c in data.clusters] == sorted(review_run["groups"], reverse=True)
    _, size, rep, preview, members, more = data.clusters[0]
    assert (size, rep, more) == (4, "g0-0", 0) and preview.startswith(review_run["texts"][0][:50])
    assert sorted(m[0] for m in members) == ["g0-1", "g0-2", "g0-3"]
    planted = next(m for m in members if m[0] == "g0-1")
    _, cosine, jaccard, changed, ops = planted
    assert cosine >= review_run["threshold"] and 0.9 < jaccard < 1.0 and changed == 2
    assert ["+", review_run["planted"] + " "] in ops
    assert [m[1] for m in members] == sorted(m[1] for m in members)  # weakest member first


def test_near_pairs_histograms_and_pr(review_run):
    data = gather_report(review_run["out"], labels="cluster")
    t = review_run["threshold"]
    near = data.near["cosine"]
    assert near["above"] and all(p[2] >= t for p in near["above"])
    assert near["above"][0][2] == min(p[2] for p in near["above"])
    below = {(p[0], p[1]) for p in near["below"]}
    assert ("near-a", "near-b") in below and all(p[2] < t and not p[5] for p in near["below"])
    kinds = {h["kind"]: h for h in data.histograms}
    assert set(kinds) == {"cosine", "jaccard"} and len(kinds["cosine"]["above"]) == data.summary["verified_pairs"]
    assert data.pr is not None and data.pr["kind"] == "cosine"
    assert data.pr["chosen"]["precision"] == 1.0 and data.pr["chosen"]["recall"] == 1.0
    assert any(abs(p[0] - t) < 1e-12 for p in data.pr["points"])


def test_bounds_and_sampling(review_run):
    top2 = gather_report(review_run["out"], options=ReportOptions(max_clusters=2, max_members=1))
    assert [c[1] for c in top2.clusters] == [4, 3] and top2.duplicate_clusters == 5
    assert len(top2.clusters[0][4]) == 1 and top2.clusters[0][5] == 2
    s1 = gather_report(review_run["out"], options=ReportOptions(sample=3, seed=1))
    s2 = gather_report(review_run["out"], options=ReportOptions(sample=3, seed=1))
    assert [c[0] for c in s1.clusters] == [c[0] for c in s2.clusters] and len(s1.clusters) == 3


def test_without_texts_and_label_errors(review_run, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(review_run["out"], out)
    summary = (out / "summary.json").read_text().replace(str(review_run["corpus"].resolve()), str(tmp_path / "gone.parquet"))
    (out / "summary.json").write_text(summary)
    data = gather_report(out)
    assert not data.texts_available and data.clusters[0][4][0][4] is None
    assert any("--corpus" in n for n in data.notes)
    with pytest.raises(ValueError, match="--labels needs the corpus"):
        gather_report(out, labels="cluster")
    with pytest.raises(ValueError, match="no column 'nope'"):
        gather_report(out, corpus=review_run["corpus"], labels="nope")
