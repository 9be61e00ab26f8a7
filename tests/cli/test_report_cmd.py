"""``reformer-retrieval report``: a page from a dedup output directory; one-line errors."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from reformer_retrieval.cli.main import cli

STORY = ("the quick brown fox jumps over the lazy dog near the river bank in the morning light while the farmer "
         "counts his sheep and the baker opens the shop ")


@pytest.fixture
def run_dir(tmp_path):
    corpus = tmp_path / "c.parquet"
    texts = [STORY * 3, STORY * 3 + "and then it rained", "zebras graze on the plain", STORY * 3 + " the end"]
    pq.write_table(pa.table({"id": ["a", "b", "c", "d"], "text": texts, "label": ["x", "x", "y", "x"]}), corpus)
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["dedup", str(corpus), "-o", str(out), "--method", "minhash", "--threshold", "0.5",
                                   "-q", "--show", "0"])
    assert res.exit_code == 0, res.output
    return out, corpus


def test_report_writes_a_page(run_dir, tmp_path):
    out, _ = run_dir
    res = CliRunner().invoke(cli, ["report", str(out), "-q", "--labels", "label"])
    assert res.exit_code == 0, res.output
    assert "1 of 1 clusters with duplicates" in res.output and "bytes per cluster" in res.output
    html = (out / "report.html").read_text()
    assert 'data-key="documents" data-value="4"' in html and 'id="threshold-marker-jaccard"' in html
    assert 'id="pr-curve"' in html and "and then it rained" in html
    chunks = [json.loads(part.split(">", 1)[1]) for part in html.split('<script type="application/json" class="rr-chunk"')[1:]
              for part in [part.split("</script>")[0]]]
    assert chunks[0][0][1] == 3  # one cluster of three
    page = tmp_path / "other.html"
    res = CliRunner().invoke(cli, ["report", str(out), "-o", str(page), "-q", "--max-clusters", "0"])
    assert res.exit_code == 0 and page.is_file() and "0 of 1 clusters" in res.output


def test_report_errors_are_one_line(run_dir, tmp_path):
    out, _ = run_dir
    res = CliRunner().invoke(cli, ["report", str(tmp_path / "nowhere")])
    assert res.exit_code == 1 and "not a directory" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(cli, ["report", str(out), "--labels", "nope", "-q"])
    assert res.exit_code == 1 and "no column 'nope'" in res.output
