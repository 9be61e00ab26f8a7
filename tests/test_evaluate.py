"""Dedup and search metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from reformer_retrieval.dedup import find_duplicates, union_find
from reformer_retrieval.evaluate import (
    dedup_metrics,
    labels_to_codes,
    plot_pr_curve,
    search_metrics,
    sweep_dedup,
    threshold_sweep,
)


def test_dedup_metrics_hand_computed():
    predicted = ["a", "a", "b", "b", "c"]
    truth = [0, 0, 0, 1, 1]
    m = dedup_metrics(predicted, truth)
    # predicted pairs {01, 23}; true pairs {01, 02, 12, 34}; correct {01}
    assert (m.predicted_pairs, m.true_pairs, m.correct_pairs) == (2, 4, 1)
    assert m.precision == pytest.approx(0.5)
    assert m.recall == pytest.approx(0.25)
    assert m.f1 == pytest.approx(1 / 3)
    # ARI = (1 - 2*4/10) / ((2+4)/2 - 2*4/10) = 0.2 / 2.2
    assert m.ari == pytest.approx(0.2 / 2.2)
    assert m.ari == pytest.approx(adjusted_rand_score(truth, predicted))
    assert m.n_clusters == 3 and m.n_docs == 5


def test_dedup_metrics_edge_cases():
    perfect = dedup_metrics([5, 5, 7], ["x", "x", "y"])
    assert (perfect.ari, perfect.precision, perfect.recall, perfect.f1) == (1.0, 1.0, 1.0, 1.0)
    none = dedup_metrics([0, 1, 2], ["x", "x", "y"])  # nothing predicted: precision 1 by convention
    assert none.precision == 1.0 and none.recall == 0.0 and none.f1 == 0.0
    with pytest.raises(ValueError, match="2 predicted labels but 3"):
        dedup_metrics([0, 1], [0, 1, 2])
    np.testing.assert_array_equal(labels_to_codes(["b", "a", "b", "c"]), [0, 1, 0, 2])


def test_threshold_sweep_hand_computed_and_consistent():
    truth = [0, 0, 0, 1, 1, 2]
    a = np.array([0, 1, 3, 2, 0])
    b = np.array([1, 2, 4, 3, 5])
    s = np.array([0.95, 0.9, 0.85, 0.6, 0.4])
    sweep = threshold_sweep(6, a, b, s, truth, [0.3, 0.5, 0.8, 0.92, 0.99])
    assert [m.threshold for m in sweep] == [0.3, 0.5, 0.8, 0.92, 0.99]
    at = {m.threshold: m for m in sweep}
    # t=0.8: clusters {0,1,2} {3,4} {5} = the truth
    assert at[0.8].ari == pytest.approx(1.0) and at[0.8].f1 == pytest.approx(1.0)
    # t=0.92: only (0,1): precision 1, recall 1/4
    assert at[0.92].precision == 1.0 and at[0.92].recall == pytest.approx(0.25)
    assert at[0.99].predicted_pairs == 0 and at[0.99].n_clusters == 6
    # every point equals clustering the pairs >= t from scratch
    for m in sweep:
        keep = s >= m.threshold
        ref = dedup_metrics(union_find(6, a[keep], b[keep]), truth)
        assert (m.correct_pairs, m.predicted_pairs, m.n_clusters) == (ref.correct_pairs, ref.predicted_pairs,
                                                                     ref.n_clusters)
        assert m.ari == pytest.approx(ref.ari)


def test_search_metrics_hand_computed():
    results = {"q1": ["x", "a", "y", "b"], "q2": ["self", "c", "z"], "q3": ["n"]}
    qrels = {"q1": {"a": 1, "b": 1, "junk": 0}, "q2": {"c": 1, "self": 1}, "q3": {"m": 1}, "q4": {"none": 0}}
    m = search_metrics(results, qrels, ks=(1, 2, 4), exclude={"q2": "self"})
    # q1: recall@1 0, @2 1/2, @4 1; q2 (own doc removed): c at rank 1; q3: nothing
    assert m["recall@1"] == pytest.approx((0 + 1 + 0) / 3)
    assert m["recall@2"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert m["recall@4"] == pytest.approx((1 + 1 + 0) / 3)
    assert m["mrr"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    ndcg_q1 = (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3))
    assert m["ndcg@10"] == pytest.approx((ndcg_q1 + 1.0 + 0.0) / 3)
    assert m["queries"] == 3 and m["queries_without_relevant"] == 1


def test_ndcg_gives_no_credit_to_unretrieved_documents():
    # only one hit returned; the second relevant document was not retrieved at all
    m = search_metrics({"q": ["a"]}, {"q": {"a": 1, "b": 1}}, ks=(1,))
    assert m["ndcg@10"] == pytest.approx(1 / (1 + 1 / math.log2(3)))
    graded = search_metrics({"q": ["b", "a"]}, {"q": {"a": 2, "b": 1}}, ks=(1,))
    assert graded["ndcg@10"] == pytest.approx((1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3)))


def test_plot_pr_curve(tmp_path):
    pytest.importorskip("matplotlib")
    truth = [0, 0, 1, 1]
    sweep = threshold_sweep(4, np.array([0, 2, 0]), np.array([1, 3, 2]), np.array([0.9, 0.8, 0.5]), truth,
                            [0.4, 0.6, 0.85])
    path = plot_pr_curve({"embedding": sweep}, tmp_path / "pr.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_minhash_sweep_matches_separate_runs():
    """The MinHash sweep (shingles and signatures computed once) scores what separate runs find."""
    texts = ["alpha beta gamma delta epsilon zeta", "alpha beta gamma delta epsilon eta",
             "one two three four five", "one two three four six", "lorem ipsum dolor sit amet",
             "one two three four five seven"]
    ids = [f"d{i}" for i in range(len(texts))]
    truth = ["a", "a", "b", "b", "c", "b"]
    thresholds = [0.2, 0.4, 0.6]
    rows, first = sweep_dedup(ids, truth, thresholds, method="minhash", texts=texts, num_perm=64, ngram=1)
    assert [m.threshold for m in rows] == thresholds
    for m, t in zip(rows, thresholds):
        alone = find_duplicates(ids, texts=texts, method="minhash", threshold=t, num_perm=64, ngram=1)
        assert m.to_dict() == {**dedup_metrics(alone.cluster_id, truth).to_dict(), "threshold": t}
    assert first.summary["thresholds"] == {"jaccard": 0.2}
    with pytest.raises(ValueError, match="signatures have shape"):
        find_duplicates(ids, texts=texts, method="minhash", signatures=np.zeros((2, 128), np.uint32))


def test_read_labels_from_json_lines_and_csv(tmp_path):
    from reformer_retrieval.evaluate import read_labels

    (tmp_path / "l.jsonl").write_text('{"id": 1, "meta": {"cluster": "a"}}\n{"id": 2, "meta": {"cluster": "a"}}\n')
    assert read_labels(tmp_path / "l.jsonl", label_column="meta.cluster") == {1: "a", 2: "a"}
    (tmp_path / "l.csv").write_text("id,cluster\nx,1\nx,2\n")
    with pytest.raises(ValueError, match=r"l\.csv: id 'x' appears twice"):
        read_labels(tmp_path / "l.csv")
    with pytest.raises(ValueError, match="no column 'label'"):
        read_labels(tmp_path / "l.csv", label_column="label")
