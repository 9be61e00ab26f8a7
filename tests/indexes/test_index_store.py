"""Index directories: atomic writes, killed writers, incomplete or mismatched directories refused."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
from reformer_retrieval.indexes import (
    IndexDirectoryError,
    IndexMismatchError,
    build_index,
    open_index,
    read_manifest,
)
from reformer_retrieval.indexes import store as store_module


def _vectors(n: int = 50, dim: int = 8, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_manifest_contents(tmp_path):
    index = build_index("hnsw", _vectors(), [f"d{i}" for i in range(50)], model_id="abc123", m=8)
    index.save(tmp_path / "i")
    manifest = read_manifest(tmp_path / "i")
    assert manifest["format_version"] == store_module.FORMAT_VERSION
    assert manifest["kind"] == "hnsw" and manifest["metric"] == "inner_product"
    assert manifest["dim"] == 8 and manifest["count"] == 50 and manifest["model_id"] == "abc123"
    assert manifest["parameters"]["m"] == 8 and manifest["id_type"] == "string"
    assert set(manifest["files"]) == {"index.faiss", "ids.parquet"}
    assert sorted(os.listdir(tmp_path)) == ["i"]  # no temporary folder left behind


def test_mismatched_model_or_dim_refused_with_both_ids(tmp_path):
    build_index("flat", _vectors(), list(range(50)), model_id="aaaaaaaaaaaa").save(tmp_path / "i")
    with pytest.raises(IndexMismatchError) as err:
        open_index(tmp_path / "i", expect_model_id="bbbbbbbbbbbb", expect_dim=8)
    assert "aaaaaaaaaaaa" in str(err.value) and "bbbbbbbbbbbb" in str(err.value)
    with pytest.raises(IndexMismatchError, match=r"8-dim.*16-dim"):
        open_index(tmp_path / "i", expect_dim=16)
    assert open_index(tmp_path / "i", expect_model_id="aaaaaaaaaaaa", expect_dim=8).count == 50


def test_directory_without_manifest_is_not_an_index(tmp_path):
    index = build_index("flat", _vectors(), list(range(50)))
    partial = tmp_path / "p"
    partial.mkdir()
    index._write(partial)  # the index file exists, the manifest does not: an interrupted writer
    with pytest.raises(IndexDirectoryError, match="not a complete index directory"):
        open_index(partial)
    with pytest.raises(IndexDirectoryError, match="no index directory"):
        open_index(tmp_path / "missing")


def test_file_not_matching_manifest_refused(tmp_path):
    build_index("flat", _vectors(), list(range(50))).save(tmp_path / "a")
    build_index("flat", _vectors(60, seed=1), list(range(60))).save(tmp_path / "b")
    # an index file from another write (different size)
    (tmp_path / "a" / "index.faiss").write_bytes((tmp_path / "b" / "index.faiss").read_bytes())
    with pytest.raises(IndexDirectoryError, match="bytes but the manifest says"):
        open_index(tmp_path / "a")
    # same size, different bytes
    build_index("flat", _vectors(), list(range(50))).save(tmp_path / "c")
    data = bytearray((tmp_path / "c" / "index.faiss").read_bytes())
    data[-5] ^= 0xFF
    (tmp_path / "c" / "index.faiss").write_bytes(bytes(data))
    with pytest.raises(IndexDirectoryError, match="SHA-256"):
        open_index(tmp_path / "c")
    # a missing file
    build_index("flat", _vectors(), list(range(50))).save(tmp_path / "d")
    (tmp_path / "d" / "ids.parquet").unlink()
    with pytest.raises(IndexDirectoryError, match=r"ids\.parquet is missing"):
        open_index(tmp_path / "d")


def test_format_version_checked(tmp_path):
    build_index("flat", _vectors(), list(range(50))).save(tmp_path / "i")
    path = tmp_path / "i" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["format_version"] = 99
    path.write_text(json.dumps(manifest))
    with pytest.raises(IndexDirectoryError, match="format_version 99"):
        open_index(tmp_path / "i")


def test_overwrite_rules(tmp_path):
    index = build_index("flat", _vectors(), list(range(50)))
    index.save(tmp_path / "i")
    with pytest.raises(IndexDirectoryError, match="exists"):
        index.save(tmp_path / "i")
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("precious")
    with pytest.raises(IndexDirectoryError, match=r"without manifest\.json"):
        index.save(other, overwrite=True)
    assert (other / "keep.txt").read_text() == "precious"
    empty = tmp_path / "empty"
    empty.mkdir()
    index.save(empty)  # an empty folder may be filled
    assert open_index(empty).count == 50


def test_failed_write_leaves_previous_index_intact(tmp_path, monkeypatch):
    build_index("flat", _vectors(), list(range(50))).save(tmp_path / "i")
    bigger = build_index("flat", _vectors(80, seed=2), list(range(80)))

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(store_module, "_write_ids", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        bigger.save(tmp_path / "i", overwrite=True)
    assert open_index(tmp_path / "i").count == 50
    assert sorted(os.listdir(tmp_path)) == ["i"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize("stage", ["files", "swap"])
def test_killed_writer_never_leaves_a_valid_looking_partial_index(tmp_path, stage):
    """A writer killed (SIGKILL) mid-write leaves the old index, or says where it is; never a mixture."""
    build_index("flat", _vectors(), list(range(50)), model_id="old").save(tmp_path / "i")
    new = build_index("flat", _vectors(70, seed=3), list(range(70)), model_id="new")
    pid = os.fork()
    if pid == 0:  # the writer: killed by SIGKILL at the chosen moment, no cleanup can run
        try:
            if stage == "files":  # after index.faiss, before ids.parquet and the manifest
                store_module._write_ids = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
            else:  # after the old folder was renamed away, before the new one is renamed in
                real_rename = os.rename

                def rename(src, dst):
                    real_rename(src, dst)
                    if ".old-" in str(dst):
                        os.kill(os.getpid(), signal.SIGKILL)

                store_module.os.rename = rename
            new.save(tmp_path / "i", overwrite=True)
        finally:
            os._exit(3)  # not reached when the kill happens
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    leftovers = sorted(p for p in os.listdir(tmp_path) if p != "i")
    assert leftovers, "the killed writer leaves its temporary folder behind"
    partial = [p for p in leftovers if p.startswith(".i.partial-")]
    assert len(partial) == 1
    if stage == "files":
        with pytest.raises(IndexDirectoryError, match="not a complete index directory"):
            open_index(tmp_path / partial[0])
        index = open_index(tmp_path / "i")
        assert index.model_id == "old" and index.count == 50
    else:
        with pytest.raises(IndexDirectoryError, match=r"previous version at .*\.i\.old-.* new, complete one at"):
            open_index(tmp_path / "i")
        old = [p for p in leftovers if p.startswith(".i.old-")]
        assert open_index(tmp_path / old[0]).model_id == "old"
        assert open_index(tmp_path / partial[0]).model_id == "new"  # fully written, only not renamed in
