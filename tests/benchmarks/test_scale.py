"""benchmarks/scale.py: the generated corpora / vectors plant what they say; runs' table rows agree with their JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import scale


def test_make_corpus_plants_groups_of_edited_copies(tmp_path):
    planted = scale.make_corpus(tmp_path / "c.parquet", 500, seed=1)
    table = pq.read_table(tmp_path / "c.parquet")
    group = table.column("group").to_numpy()
    sizes = np.bincount(group)[np.unique(group)]
    assert planted == int((sizes * (sizes - 1) // 2).sum()) > 50
    assert np.all(group[::10] == np.arange(0, 500, 10))  # every tenth document starts a group
    texts = table.column("text").to_pylist()
    a, b = set(texts[0].split()), set(texts[1].split())
    assert group[1] == 0 and len(a & b) >= 0.8 * len(a)  # a copy keeps most of its source's words
    scale.make_corpus(tmp_path / "d.parquet", 500, seed=1)
    assert pq.read_table(tmp_path / "d.parquet").equals(table)  # seeded


def test_local_run_row_and_table(tmp_path, capsys):
    assert scale.main(["--sizes", "3000", "--engines", "local", "--json", str(tmp_path / "r.json"),
                       "--work-dir", str(tmp_path / "w")]) == 0
    (row,) = json.loads((tmp_path / "r.json").read_text())
    assert row["status"] == "ok" and row["false_pairs"] == 0
    assert row["cpu_seconds"] > 0 and len(row["load_1min"]) == 2
    assert 0.9 * row["planted"] <= row["planted_found"] <= row["planted"]
    out = capsys.readouterr().out
    assert f"| 3000 | local | ok | {row['seconds']} |" in out


def test_make_vectors_plants_near_copies_at_the_stated_cosine(tmp_path):
    from reformer_retrieval.corpus import read_embeddings

    planted = scale.make_vectors(tmp_path / "c.parquet", tmp_path / "e.parquet", 2000, seed=3, dim=64, rank=32,
                                 threshold=0.9)
    table = read_embeddings(tmp_path / "e.parquet")
    group = pq.read_table(tmp_path / "c.parquet").column("group").to_numpy()
    assert planted == 200 == int((group != np.arange(2000)).sum())
    copies = np.flatnonzero(group != np.arange(2000))
    cos = (table.vectors[copies] * table.vectors[group[copies]]).sum(axis=1)
    assert cos.min() >= 0.91 - 1e-5 and cos.max() <= 0.995 + 1e-5
    assert np.allclose(np.linalg.norm(table.vectors, axis=1), 1.0, atol=1e-5)
    assert table.ids == pq.read_table(tmp_path / "c.parquet").column("id").to_pylist()
    sims = table.vectors[:500] @ table.vectors[:500].T  # unrelated vectors stay far below the threshold
    i, j = np.triu_indices(500, 1)
    unrelated = (group[i] != group[j]) & (group[i] != j) & (group[j] != i)
    assert sims[i, j][unrelated].max() < 0.9


@pytest.mark.slow
def test_embedding_and_datasketch_rows(tmp_path, capsys):
    assert scale.main(["--sizes", "3000", "--method", "embedding", "--engines", "local", "--dim", "64",
                       "--rank", "32", "--threshold", "0.9", "--json", str(tmp_path / "e.json"),
                       "--work-dir", str(tmp_path / "we")]) == 0
    (row,) = json.loads((tmp_path / "e.json").read_text())
    assert row["status"] == "ok" and row["method"] == "embedding" and row["false_pairs"] == 0
    assert row["planted"] == 300 and row["planted_found"] >= 297  # SRP bands: recall >= 0.99 at the threshold
    assert scale.main(["--sizes", "3000", "--engines", "local,datasketch", "--json", str(tmp_path / "d.json"),
                       "--work-dir", str(tmp_path / "wd")]) == 0
    local, ds = json.loads((tmp_path / "d.json").read_text())
    assert ds["engine"] == "datasketch" and ds["status"] == "ok" and ds["false_pairs"] == 0
    assert 0.9 * ds["planted"] <= ds["planted_found"] <= ds["planted"]
    assert abs(ds["planted_found"] - local["planted_found"]) <= 0.05 * local["planted"]  # same documents, same test
    out = capsys.readouterr().out
    assert f"3,000 documents: datasketch {ds['seconds']} s / local {local['seconds']} s" in out


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads Linux /proc")
def test_cpu_seconds_counts_live_descendants():
    before = scale.cpu_seconds()
    burn = ("import time\nt = time.process_time()\nwhile time.process_time() - t < 0.5:\n    pass\n"
            "print('done', flush=True)\ntime.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", burn], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "done"
        assert scale.cpu_seconds() - before >= 0.45  # the child's half second, while it still runs
    finally:
        child.kill()
        child.wait()
