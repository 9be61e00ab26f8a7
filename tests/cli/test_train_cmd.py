"""``reformer-retrieval train``: a tiny run end to end, resume, overrides and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from reformer_retrieval.cli.main import cli

from reformer_retrieval.checkpoint import read_training

TINY = {
    "model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64, "embedding_dim": 16, "chunk_size": 16,
              "max_len": 512, "axial_pos_shape": [32, 16], "n_hashes": 2},
    "steps": 4,
    "curriculum": [{"until": 1.0, "max_tokens": 96, "batch_size": 6, "position_offset_prob": 0.5}],
    "val_docs": 4, "val_long_docs": 0, "eval_lengths": [128], "checkpoint_every": 2, "device": "cpu",
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "river", "stone", "cloud", "paper", "light", "house"]
    texts = [" ".join(rng.choice(words, size=int(rng.integers(40, 120)))) + f" doc {i}" for i in range(20)]
    path = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"id": [f"d{i}" for i in range(20)], "text": texts}), path)
    return path


def test_train_command_runs_and_resumes(corpus: Path, tmp_path: Path) -> None:
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    out = tmp_path / "model"
    runner = CliRunner()
    result = runner.invoke(cli, ["train", str(corpus), "-o", str(out), "--config", str(config), "-q"])
    assert result.exit_code == 0, result.output
    assert "complete: 4/4 steps" in result.output and "recall@1/128" in result.output
    record = json.loads((out / "training.json").read_text())
    assert record["command"].startswith("reformer-retrieval ") and record["steps"]["done"] == 4
    assert {"config.json", "model.safetensors", "tokenizer.json", "metrics.jsonl"} <= {p.name for p in out.iterdir()}

    again = runner.invoke(cli, ["train", str(corpus), "-o", str(out), "--config", str(config), "-q"])
    assert again.exit_code != 0 and "--resume" in again.output

    # Resuming a finished run with a longer budget override is allowed and does nothing more.
    resumed = runner.invoke(cli, ["train", str(corpus), "-o", str(out), "--resume", "--max-minutes", "5", "-q"])
    assert resumed.exit_code == 0, resumed.output
    assert "4/4 steps" in resumed.output


def test_train_command_errors_are_one_line(corpus: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**TINY, "steps": 0}))
    result = CliRunner().invoke(cli, ["train", str(corpus), "-o", str(tmp_path / "m"), "--config", str(bad)])
    assert result.exit_code != 0 and "steps" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(cli, ["train", str(corpus), "-o", str(tmp_path / "m2"), "--resume"])
    assert result.exit_code != 0 and "no checkpoint" in result.output
    text_less = tmp_path / "nocol.parquet"
    pq.write_table(pa.table({"id": ["a"], "body": ["x"]}), text_less)
    result = CliRunner().invoke(cli, ["train", str(text_less), "-o", str(tmp_path / "m3")])
    assert result.exit_code != 0 and "nocol.parquet" in result.output and "'text'" in result.output
    result = CliRunner().invoke(cli, ["train", str(tmp_path / "absent.jsonl"), "-o", str(tmp_path / "m4")])
    assert result.exit_code != 0 and "absent.jsonl does not exist" in result.output and "Traceback" not in result.output
    notes = tmp_path / "notes.txt"
    notes.write_text("one document per line\n")
    result = CliRunner().invoke(cli, ["train", str(notes), "-o", str(tmp_path / "m5")])
    assert f"only Parquet, JSON Lines and CSV are read: {notes} looks like plain text (.txt)" in result.output


def test_train_command_reads_a_json_lines_glob(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    words = ["alpha", "beta", "gamma", "delta", "river", "stone", "cloud", "paper", "light", "house"]
    texts = [" ".join(rng.choice(words, size=int(rng.integers(40, 120)))) + f" doc {i}" for i in range(24)]
    for k in range(2):
        lines = [json.dumps({"id": f"d{k}-{i}", "text": t}) for i, t in enumerate(texts[k * 12 : (k + 1) * 12])]
        (tmp_path / f"shard-{k}.jsonl").write_text("\n".join(lines) + "\n")
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({**TINY, "steps": 1, "val_docs": 0}))
    out = tmp_path / "model"
    result = CliRunner().invoke(cli, ["train", str(tmp_path / "shard-*.jsonl"), "-o", str(out), "--config",
                                      str(config), "-q"])
    assert result.exit_code == 0, result.output
    assert [f["name"] for f in read_training(out)["data"]["files"]] == ["shard-0.jsonl", "shard-1.jsonl"]
