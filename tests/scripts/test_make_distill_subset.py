"""scripts/make_distill_subset.py: the seeded prefix sample, the labelled subset as model_quality makes it, the
float16 teacher copy and the manifest."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[2]


def _load():
    spec = importlib.util.spec_from_file_location("make_distill_subset", REPO / "scripts" / "make_distill_subset.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _corpus(root: Path) -> dict[str, str]:
    root.mkdir()
    texts = {f"d{i}": f"é{i} " + "x" * (5 + i) for i in range(9)}
    items = list(texts.items())
    pq.write_table(pa.table({"id": [k for k, _ in items[:5]], "text": [v for _, v in items[:5]]}),
                   root / "train-00000.parquet", row_group_size=2)
    pq.write_table(pa.table({"id": [k for k, _ in items[5:]] + ["empty", "null"],
                             "text": [v for _, v in items[5:]] + ["", None]}), root / "train-00001.parquet")
    pq.write_table(pa.table({"id": ["dev"], "text": ["not training text"]}), root / "dev-00000.parquet")
    return texts


def _labelled(path: Path) -> Path:
    rng = np.random.default_rng(0)
    texts, clusters = [], []
    for c in range(6):
        base = " ".join(f"w{int(w)}" for w in rng.integers(0, 400, size=80))
        for v in range(3):
            texts.append(base + f" version {v}")
            clusters.append(f"c{c}")
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(len(texts))], "text": texts, "cluster": clusters}), path)
    return path


def test_prefix_sample_is_seeded_cut_and_skips_empty_texts(tmp_path: Path) -> None:
    module = _load()
    texts = _corpus(tmp_path / "corpus")
    table = module.prefix_sample(tmp_path / "corpus", docs=100, max_chars=4, seed=0)
    assert table.column("id").to_pylist() == list(texts)  # every training document, in corpus order; no dev
    assert table.column("text").to_pylist() == [t[:4] for t in texts.values()]  # characters, not bytes
    a = module.prefix_sample(tmp_path / "corpus", docs=4, max_chars=10, seed=1)
    assert a.equals(module.prefix_sample(tmp_path / "corpus", docs=4, max_chars=10, seed=1))
    assert a.num_rows <= 4 and set(a.column("id").to_pylist()) <= set(texts)
    assert a.column("id").to_pylist() != module.prefix_sample(tmp_path / "corpus", docs=4, max_chars=10,
                                                               seed=2).column("id").to_pylist()


def test_the_labelled_subset_is_model_quality_s(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from model_quality import load_labelled

    from reformer_retrieval.train.augment import augment

    module = _load()
    path = _labelled(tmp_path / "labelled.parquet")
    clean, ocr = module.labelled_subset(path, clusters=3, seed=0)
    data = load_labelled(path, 3, 0, 0)
    assert clean.column("id").to_pylist() == data["ids"] and clean.column("text").to_pylist() == data["texts"]
    assert ocr.column("text").to_pylist() == [augment(t, 0.5, seed=(0, int(r)), preset="ocr")
                                             for t, r in zip(data["texts"], data["rows"])]
    assert ocr.column("text").to_pylist() != data["texts"] and len(set(clean.column("cluster").to_pylist())) == 3


def test_half_precision_copy_and_the_manifest(tmp_path: Path) -> None:
    module = _load()
    teacher = tmp_path / "teacher"
    (teacher / "1_Pooling").mkdir(parents=True)
    (teacher / "modules.json").write_text("[]")
    (teacher / "1_Pooling" / "config.json").write_text("{}")
    weights = {"w": torch.randn(4, 3), "ids": torch.arange(5)}
    save_file(weights, teacher / "model.safetensors")
    _corpus(tmp_path / "corpus")
    manifest = module.make_subset(tmp_path / "out", tmp_path / "corpus", _labelled(tmp_path / "l.parquet"), docs=5,
                                  max_chars=6, seed=0, clusters=2, label_seed=0, teacher=teacher)
    copied = load_file(tmp_path / "out" / "minilm_fp16" / "model.safetensors")
    assert copied["w"].dtype == torch.float16 and torch.equal(copied["ids"], weights["ids"])
    torch.testing.assert_close(copied["w"].float(), weights["w"], atol=1e-3, rtol=1e-3)
    assert (tmp_path / "out" / "minilm_fp16" / "1_Pooling" / "config.json").is_file()
    assert json.loads((tmp_path / "out" / "manifest.json").read_text()) == manifest
    assert manifest["corpus"]["docs"] == 5 and manifest["labelled"]["docs"] == 6
    assert manifest["total_bytes"] == sum(p.stat().st_size for p in (tmp_path / "out").rglob("*") if p.is_file()) \
        - (tmp_path / "out" / "manifest.json").stat().st_size
    with pytest.raises(FileNotFoundError, match="modules"):
        module.half_precision_copy(tmp_path / "corpus", tmp_path / "nope")
    assert module.main(["--corpus", str(tmp_path / "missing"), "--out", str(tmp_path / "x"), "--teacher", "none",
                        "--labelled", "none"]) == 2
