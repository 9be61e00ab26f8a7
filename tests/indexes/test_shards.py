"""ShardedArray: append-only shards, joined lazily, written once, loaded memory-mapped in row order."""

from __future__ import annotations

import numpy as np
import pytest
from reformer_retrieval.indexes.shards import ShardedArray


def test_append_join_write_and_load(tmp_path):
    arr = ShardedArray("rows", 3, np.float32)
    assert arr.array().shape == (0, 3) and len(arr) == 0
    a, b = np.arange(6, dtype=np.float32).reshape(2, 3), np.ones((1, 3), np.float32)
    arr.append(a)
    arr.append(np.zeros((0, 3)))  # an empty add makes no shard
    arr.append(b)
    assert arr.n_shards == 2 and len(arr) == 3
    np.testing.assert_array_equal(arr.array(), np.concatenate([a, b]))
    a[0, 0] = 99  # appended rows are copies
    assert arr.array()[0, 0] == 0
    names = arr.write_all(tmp_path)
    assert ShardedArray.names_in([*reversed(names), "other.npy", "rows.npy"], "rows") == names
    arr.append(2 * b)
    all_names, new = arr.write_new(tmp_path)
    assert all_names[:2] == names and len(new) == 1 and new[0] == all_names[2]
    back = ShardedArray.load(tmp_path, ShardedArray.names_in(all_names, "rows"), "rows", 3, np.float32)
    assert all(isinstance(s, np.memmap) for s in back.shard_arrays())
    np.testing.assert_array_equal(back.array(), arr.array())


def test_names_sort_by_position_not_text():
    names = ["v-000010-aa.npy", "v-000002-ff.npy", "v-000001.npy"]
    assert ShardedArray.names_in(names, "v") == ["v-000001.npy", "v-000002-ff.npy", "v-000010-aa.npy"]


def test_wrong_width_refused(tmp_path):
    arr = ShardedArray("rows", 3, np.float32)
    with pytest.raises(ValueError, match=r"need \(m, 3\)"):
        arr.append(np.zeros((2, 4)))
    np.save(tmp_path / "rows-000000.npy", np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"expected \(n, 3\)"):
        ShardedArray.load(tmp_path, ["rows-000000.npy"], "rows", 3, np.float32)
