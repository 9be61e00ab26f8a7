"""reformer_retrieval.atomic: the final file's mode follows the umask, which is never changed to learn it."""

from __future__ import annotations

import os
import stat

import pytest

from reformer_retrieval import atomic
from reformer_retrieval.atomic import atomic_path, atomic_write_bytes, atomic_write_text


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_mode_follows_umask_without_calling_umask(tmp_path, monkeypatch, umask):
    previous = os.umask(umask)  # the test sets the process umask before the code under test runs
    try:
        def forbidden(*_: object) -> int:
            raise AssertionError("os.umask was called during an atomic write (it changes process-wide state)")

        monkeypatch.setattr(os, "umask", forbidden)
        target = atomic_write_text(tmp_path / "a.json", "{}")
        with atomic_path(tmp_path / "b.bin") as tmp:
            tmp.write_bytes(b"x")
        monkeypatch.undo()
    finally:
        os.umask(previous)
    for path in (target, tmp_path / "b.bin"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert target.read_text() == "{}"


def test_failed_write_leaves_target_and_no_temp(tmp_path):
    target = atomic_write_bytes(tmp_path / "t.bin", b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"new, half")
        raise RuntimeError("killed")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.bin"]


def test_temp_name_collision_is_retried(tmp_path, monkeypatch):
    names = iter(["aaaaaaaaaaaa", "aaaaaaaaaaaa", "bbbbbbbbbbbb"])
    monkeypatch.setattr(atomic.secrets, "token_hex", lambda n: next(names))
    target = tmp_path / "x"
    with atomic_path(target) as first:
        with atomic_path(target) as second:  # its first name is the one `first` holds: retried
            assert first.name == ".x.aaaaaaaaaaaa.tmp" and second.name == ".x.bbbbbbbbbbbb.tmp"
            second.write_bytes(b"2")
        assert target.read_bytes() == b"2"
        first.write_bytes(b"1")
    assert target.read_bytes() == b"1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]
