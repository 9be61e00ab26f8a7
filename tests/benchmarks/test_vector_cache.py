"""benchmarks/vector_cache.py: vectors looked up by text hash, new ones kept, settings and shapes checked."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from vector_cache import VectorCache, encode_cached, text_hash


def _fake(calls: list[list[str]]):
    def fn(texts: list[str]) -> np.ndarray:
        calls.append(list(texts))
        return np.asarray([[len(t), t.count("a"), 1.0] for t in texts], dtype=np.float32)

    return fn


def test_encode_cached_encodes_each_distinct_text_once_and_reruns_free(tmp_path: Path) -> None:
    calls: list[list[str]] = []
    texts = ["aa", "bbb", "aa", "abab", "c"]
    cache = VectorCache(tmp_path, "fake", {"k": 1})
    vectors, info = encode_cached(_fake(calls), texts, cache, save_every=2)
    assert [len(c) for c in calls] == [2, 2]  # four distinct texts in groups of two
    assert info["n_encoded"] == 4 and info["n_cached"] == 0 and info["chars_encoded"] == 2 + 3 + 4 + 1
    np.testing.assert_array_equal(vectors[0], vectors[2])
    np.testing.assert_array_equal(vectors[3], [4, 2, 1])

    calls.clear()
    again, info2 = encode_cached(_fake(calls), [*texts, "new"], VectorCache(tmp_path, "fake", {"k": 1}))
    assert calls == [["new"]] and info2["n_cached"] == 5 and info2["n_encoded"] == 1
    np.testing.assert_array_equal(again[:5], vectors)

    calls.clear()
    _, info3 = encode_cached(_fake(calls), texts, VectorCache(tmp_path, "fake", {"k": 1}))
    assert calls == [] and info3["chars_per_s_from_cache"] and info3["chars_per_s"] is not None
    meta = json.loads((tmp_path / "fake.json").read_text())
    assert meta["hashes"][:2] == [text_hash("aa"), text_hash("bbb")] and len(meta["hashes"]) == 5


def test_prepare_runs_only_when_something_is_encoded(tmp_path: Path) -> None:
    prepared: list[int] = []
    cache = VectorCache(tmp_path, "fake", {})
    encode_cached(_fake([]), ["x"], cache, prepare=lambda: prepared.append(1))
    encode_cached(_fake([]), ["x"], VectorCache(tmp_path, "fake", {}), prepare=lambda: prepared.append(2))
    assert prepared == [1]


def test_cache_refuses_other_settings_and_a_short_npy(tmp_path: Path) -> None:
    encode_cached(_fake([]), ["x", "y"], VectorCache(tmp_path, "fake", {"k": 1}))
    with pytest.raises(ValueError, match="settings"):
        VectorCache(tmp_path, "fake", {"k": 2})
    np.save(tmp_path / "fake.npy", np.zeros((1, 3), np.float32))
    with pytest.raises(ValueError, match=r"fake\.npy.*2 hashes"):
        VectorCache(tmp_path, "fake", {"k": 1})


def test_encode_cached_without_cache(tmp_path: Path) -> None:
    calls: list[list[str]] = []
    vectors, info = encode_cached(_fake(calls), ["a", "b"], None)
    assert vectors.shape == (2, 3) and info["n_encoded"] == 2 and not info["chars_per_s_from_cache"]
    assert not list(tmp_path.iterdir())


def test_two_writers_keep_each_others_rows(tmp_path: Path) -> None:
    a = VectorCache(tmp_path, "shared", {})
    b = VectorCache(tmp_path, "shared", {})  # loaded before a writes, as a second process would be
    a.add([text_hash("x")], np.ones((1, 3), np.float32), 1, 0.1)
    b.add([text_hash("y")], np.full((1, 3), 2.0, np.float32), 1, 0.1)
    a.add([text_hash("z")], np.full((1, 3), 3.0, np.float32), 1, 0.1)
    disk = VectorCache(tmp_path, "shared", {})
    assert disk.hashes == [text_hash("x"), text_hash("y"), text_hash("z")]
    np.testing.assert_array_equal(disk.vectors[:, 0], [1.0, 2.0, 3.0])
    assert disk.chars == 3 and abs(disk.seconds - 0.3) < 1e-9
    np.testing.assert_array_equal(a.get(text_hash("y")), [2.0, 2.0, 2.0])  # a sees b's row after its write
