"""model_quality.py / dedup_quality.py: the MiniLM row, per-channel rows, chars/s of every row, --no-minilm."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import dedup_quality
import model_quality
from minilm_baseline import minilm_available

needs_minilm = pytest.mark.skipif(minilm_available() is not None, reason=f"MiniLM baseline: {minilm_available()}")


def _labelled(tmp_path: Path) -> Path:
    a = "The tenant shall pay the monthly rent of four hundred dollars before the fifth day. " * 6
    b = "Glaciers carve valleys as they move slowly downhill under their own weight. " * 6
    texts = [a, a.replace("four hundred", "five hundred"), b, b.replace("slowly", "very slowly")]
    path = tmp_path / "labelled.parquet"
    pq.write_table(pa.table({"id": ["a1", "a2", "b1", "b2"], "text": texts, "cluster": ["a", "a", "b", "b"]}), path)
    return path


@pytest.mark.slow
@needs_minilm
def test_dedup_quality_minilm_and_channel_rows(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    argv = ["--data", str(_labelled(tmp_path)), "--methods", "minhash,embedding,minilm", "--minilm-cache",
            str(tmp_path / "minilm"), "--vector-cache", str(tmp_path / "models"), "--json", str(out)]
    assert dedup_quality.main(argv) == 0
    rows = {r["method"]: r for r in json.loads(out.read_text())["rows"]}
    channel_rows = [m for m in rows if m.startswith("embedding:")]
    assert "minilm" in rows and len(channel_rows) == 2
    assert rows["minilm"]["f1"] == 1.0 and rows["minilm"]["chars_per_s"] > 0
    assert all(rows[m]["chars_per_s"] > 0 for m in ("minhash", "embedding"))
    assert all(rows[m]["chars_per_s_at_least"] == rows["embedding"]["chars_per_s"] for m in channel_rows)
    assert (tmp_path / "minilm" / "minilm-c1000-s512.npy").is_file() and list((tmp_path / "models").glob("*.npy"))
    # a rerun reads both caches: same vectors, same scores
    assert dedup_quality.main(argv) == 0
    again = {r["method"]: r for r in json.loads(out.read_text())["rows"]}
    assert all(again[m]["f1"] == rows[m]["f1"] for m in rows)
    assert again["minilm"]["minilm"]["n_encoded"] == 0


def test_no_minilm_is_said(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _labelled(tmp_path)
    assert dedup_quality.main(["--data", str(data), "--methods", "minhash,minilm", "--no-minilm"]) == 0
    assert "MiniLM chunk-mean baseline row is skipped (--no-minilm)" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # two different labelled files
        dedup_quality.main([str(data), "--data", str(tmp_path / "other.parquet")])


def test_dedup_quality_names_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert dedup_quality.main(["--data", str(tmp_path / "none.parquet")]) == 2
    assert "none.parquet" in capsys.readouterr().err


@pytest.mark.slow
@needs_minilm
def test_model_quality_rows_have_chars_per_s(tmp_path: Path) -> None:
    out = tmp_path / "q.json"
    argv = ["--data", str(_labelled(tmp_path)), "--skip-random", "--minilm-cache", str(tmp_path / "minilm"),
            "--vector-cache", str(tmp_path / "models"), "--json", str(out)]
    assert model_quality.main(argv) == 0
    doc = json.loads(out.read_text())
    names = [r["method"] for r in doc["rows"] if r["data"] == "clean"]
    assert names[-1].startswith("MiniLM") and sum("channel only" in n for n in names) == 2
    for r in doc["rows"]:
        assert (r["chars_per_s"] or r["chars_per_s_at_least"]) > 0
    assert doc["meta"]["minilm"]["clean"]["n_chunks"] == 4  # 4 texts of 500-600 chars: one chunk each


def test_dedup_subset_and_noise_match_model_quality(tmp_path: Path) -> None:
    from reformer_retrieval.train import augment

    texts = [f"document {i} of cluster {i % 5}, with some words to noise " * 5 for i in range(20)]
    path = tmp_path / "labelled.parquet"
    pq.write_table(pa.table({"id": [f"d{i}" for i in range(20)], "text": texts,
                             "cluster": [f"c{i % 5}" for i in range(20)]}), path)
    ids, noisy, labels = dedup_quality.load(str(path), "id", "text", "cluster", "ocr", 0.5, 2, None,
                                            max_clusters=2, subset_seed=1)
    picked = model_quality.load_labelled(path, 2, 0, 1)
    assert ids == picked["ids"] and len(set(labels)) == 2 and len(ids) == 8
    assert noisy == [augment(t, 0.5, seed=(2, int(r)), preset="ocr") for t, r in zip(picked["texts"], picked["rows"])]


def test_family_metrics_score_only_pairs_inside_a_family(tmp_path: Path) -> None:
    import numpy as np

    clusters = np.array(["a", "a", "b", "c"])
    families = np.array(["f", "f", "f", "g"])
    sim = np.full((4, 4), 0.1)
    sim[0, 1] = sim[1, 0] = 0.9  # the positive
    sim[0, 2] = sim[2, 0] = 0.95  # a hard negative above it
    sim[1, 2] = sim[2, 1] = 0.5  # a hard negative below it
    m = model_quality.family_metrics(sim, clusters, families)
    assert m["family_auc"] == 0.5 and m["n_hard_negatives"] == 2
    assert abs(m["family_best_f1"] - 2 / 3) < 1e-9  # the pair (0, 3) etc. with 0.1 are not in it
    path = tmp_path / "fam.parquet"
    pq.write_table(pa.table({"id": list("wxyz"), "text": list("wxyz"), "cluster": clusters.tolist(),
                             "family": families.tolist()}), path)
    assert model_quality.load_labelled(path, 0, 0, 0)["families"].tolist() == families.tolist()
    pq.write_table(pa.table({"id": list("wxyz"), "text": list("wxyz"), "cluster": clusters.tolist()}), path)
    assert model_quality.load_labelled(path, 0, 0, 0)["families"] is None
