"""benchmarks/ray_encode_overhead.py: skips cleanly without the data; on a tiny corpus reports bit-equal vectors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "ray_encode_overhead.py"


def test_skips_cleanly_without_the_dev_set(tmp_path):
    out = subprocess.run([sys.executable, str(SCRIPT), "--data", str(tmp_path / "absent.parquet")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("skipped:"), out.stderr


@pytest.mark.slow
def test_tiny_run_reports_overhead_and_bit_equal_vectors(tmp_path, tiny_dir):
    pytest.importorskip("ray.data", reason="the ray extra is not installed: pip install 'reformer-retrieval[ray]'")
    data = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"id": [f"d{i}" for i in range(4)], "text": [f"text {i} " * (5 + i) for i in range(4)]}),
                   data)
    out = subprocess.run([sys.executable, str(SCRIPT), "--data", str(data), "--docs", "4", "--batch-size", "2",
                          "--model", str(tiny_dir), "--json", str(tmp_path / "r.json")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads((tmp_path / "r.json").read_text())["summary"]
    assert summary["bit_equal"] is True and summary["docs"] == 4 and summary["local_s"] > 0 and summary["ray_s"] > 0
    assert "Ray overhead" in out.stdout
