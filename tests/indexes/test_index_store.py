"""Index directories: atomic writes, killed writers, incomplete or mismatched directories refused."""

from __future__ import annotations

import itertools
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
    read_manifest(tmp_path / "c")  # sizes match: opening does not hash
    with pytest.raises(IndexDirectoryError, match="SHA-256"):
        read_manifest(tmp_path / "c", verify=True)
    with pytest.raises(IndexDirectoryError, match="SHA-256"):
        open_index(tmp_path / "c", verify=True)
    # a missing file
    build_index("flat", _vectors(), list(range(50))).save(tmp_path / "d")
    (tmp_path / "d" / "ids.parquet").unlink()
    with pytest.raises(IndexDirectoryError, match=r"ids\.parquet is missing"):
        open_index(tmp_path / "d")


@pytest.mark.parametrize("kind", ["flat", "lsh", "minhash"])
def test_open_checks_sizes_without_hashing(tmp_path, monkeypatch, kind):
    """Opening (what every `search` does) reads no file to hash it; a resized file is still refused."""
    if kind == "minhash":
        from reformer_retrieval.indexes import MinHashIndex

        index = MinHashIndex()
        index.add([f"text number {i} about things" for i in range(30)], list(range(30)))
    else:
        index = build_index(kind, _vectors(), list(range(50)))
    index.save(tmp_path / "i")

    def no_hashing(path):
        raise AssertionError(f"{path} was hashed while opening")

    monkeypatch.setattr(store_module, "_sha256", no_hashing)
    monkeypatch.setattr(store_module.hashlib, "sha256", no_hashing)
    assert open_index(tmp_path / "i").count == index.count
    biggest = max(read_manifest(tmp_path / "i")["files"], key=lambda n: (tmp_path / "i" / n).stat().st_size)
    path = tmp_path / "i" / biggest
    with open(path, "r+b") as fh:  # truncated by one byte
        fh.truncate(path.stat().st_size - 1)
    with pytest.raises(IndexDirectoryError, match=f"{biggest} has .* bytes but the manifest says"):
        open_index(tmp_path / "i")


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


def _texts(start: int, stop: int) -> list[str]:
    """Texts ``start:stop`` of one seeded list of 1,000 (near-duplicates: every fifth repeats the one before)."""
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(300)]
    texts = [" ".join(rng.choice(words, 30)) for _ in range(1000)]
    texts = [texts[i - 1] + " extra" if i % 5 == 4 else t for i, t in enumerate(texts)]
    return texts[start:stop]


def _build(kind: str, start: int, stop: int, index=None):
    """A new index of rows ``start:stop`` (or those rows added to ``index``)."""
    from reformer_retrieval.indexes import BinaryLSHIndex, MinHashIndex

    if index is None:
        index = MinHashIndex(threshold=0.3) if kind == "minhash" else BinaryLSHIndex(8, threshold=0.9, seed=3)
    if kind == "minhash":
        index.add(_texts(start, stop), [f"d{i}" for i in range(start, stop)])
    else:
        index.add(_vectors(1000, seed=7)[start:stop], [f"d{i}" for i in range(start, stop)])
    return index


def _stamp(directory):
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size) for p in directory.iterdir()}


@pytest.mark.parametrize("kind", ["lsh", "minhash"])
def test_add_writes_only_the_new_shard(tmp_path, kind):
    """Repeated `index add` appends a shard: existing files untouched, results equal a single-add index."""
    bounds = [0, 400, 550, 700, 1000]
    _build(kind, 0, 400).save(tmp_path / "i")
    for start, stop in itertools.pairwise(bounds[1:]):
        before = _stamp(tmp_path / "i")
        index = open_index(tmp_path / "i")
        index.remove(["d3"]) if start == 550 else None  # a removal in between: ids only
        _build(kind, start, stop, index).save(tmp_path / "i", overwrite=True)
        after = _stamp(tmp_path / "i")
        new = set(after) - set(before)
        gone = set(before) - set(after)
        shards = [n for n in new if n.endswith(".npy")]
        assert len(shards) == 1 and len(new) == 2  # the shard and the ids file (the manifest is replaced)
        assert all(n.startswith("ids") for n in gone) and len(gone) == 1
        for name, stamp in before.items():
            if name != "manifest.json" and name in after:
                assert after[name] == stamp, f"{name} was rewritten"
    manifest = read_manifest(tmp_path / "i", verify=True)
    assert len([n for n in manifest["files"] if n.endswith(".npy")]) == 5  # 4 shards + rotation / permutations
    assert sorted(os.listdir(tmp_path / "i")) == sorted([*manifest["files"], "manifest.json"])
    appended = open_index(tmp_path / "i")
    single = _build(kind, 0, 1000)
    single.remove(["d3"])
    assert appended.count == single.count == 999 and appended.ids == single.ids
    if kind == "minhash":
        np.testing.assert_array_equal(appended.signatures, single.signatures)
        np.testing.assert_array_equal(appended.candidate_pairs(), single.candidate_pairs())
        queries = _texts(0, 40)
        assert appended.range_search(queries).ids == single.range_search(queries).ids
    else:
        q = _vectors(1000, seed=7)[::25]
        np.testing.assert_array_equal(appended.vectors, single.vectors)
        a, b = appended.range_search(q, 0.9), single.range_search(q, 0.9)
        assert a.ids == b.ids and np.array_equal(a.scores, b.scores)
        assert appended.search(q, 5).ids == single.search(q, 5).ids


def test_killed_append_leaves_the_previous_index(tmp_path, monkeypatch):
    _build("lsh", 0, 300).save(tmp_path / "i")
    index = open_index(tmp_path / "i")
    _build("lsh", 300, 400, index)

    def killed(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(store_module, "atomic_write_text", killed)  # dies before the manifest is replaced
    with pytest.raises(KeyboardInterrupt):
        index.save(tmp_path / "i", overwrite=True)
    monkeypatch.undo()
    assert open_index(tmp_path / "i", verify=True).count == 300  # orphan shard / ids file not listed
    index.save(tmp_path / "i", overwrite=True)  # a retry after the failure writes everything again
    assert open_index(tmp_path / "i", verify=True).count == 400


def test_append_only_into_the_directory_it_was_opened_from(tmp_path):
    _build("minhash", 0, 100).save(tmp_path / "a")
    index = open_index(tmp_path / "a")
    _build("minhash", 100, 150, index).save(tmp_path / "b")  # elsewhere: a full, standalone copy
    assert open_index(tmp_path / "b", verify=True).count == 150
    _build("minhash", 0, 20).save(tmp_path / "a", overwrite=True)  # `a` replaced behind the loaded index
    _build("minhash", 150, 160, index).save(tmp_path / "a", overwrite=True)
    back = open_index(tmp_path / "a", verify=True)
    assert back.count == 160 and back.ids == index.ids


@pytest.mark.parametrize("kind", ["lsh", "minhash"])
def test_index_written_before_shards_opens_and_appends(tmp_path, kind):
    """format_version 1 directories (LSH vectors in index.faiss, MinHash signatures in signatures.npy)."""
    import faiss

    index = _build(kind, 0, 300)
    index.save(tmp_path / "i")
    d = tmp_path / "i"
    manifest = json.loads((d / "manifest.json").read_text())
    (shard,) = d.glob(("vectors" if kind == "lsh" else "signatures") + "-000000-*.npy")
    if kind == "lsh":
        flat = faiss.IndexFlatIP(8)
        flat.add(np.load(shard))
        old_name = "index.faiss"
        faiss.write_index(flat, str(d / old_name))
        shard.unlink()
    else:
        old_name = "signatures.npy"
        shard.rename(d / old_name)
    del manifest["files"][shard.name]
    manifest["files"][old_name] = store_module._file_entry(d / old_name)
    manifest["format_version"] = 1
    (d / "manifest.json").write_text(json.dumps(manifest))
    old = open_index(d, verify=True)
    assert old.ids == index.ids
    before = (d / old_name).stat().st_ino, (d / old_name).stat().st_mtime_ns
    _build(kind, 300, 400, old).save(d, overwrite=True)
    assert ((d / old_name).stat().st_ino, (d / old_name).stat().st_mtime_ns) == before
    back, single = open_index(d, verify=True), _build(kind, 0, 400)
    assert back.ids == single.ids
    if kind == "lsh":
        q = _vectors(1000, seed=7)[:400:20]
        assert back.range_search(q, 0.9).ids == single.range_search(q, 0.9).ids
    else:
        assert back.range_search(_texts(0, 40)).ids == single.range_search(_texts(0, 40)).ids
