"""tinylm.common.atomic: a reader sees the old file or directory or the new one, never half of one."""

from __future__ import annotations

import os
import stat

import pytest

from tinylm.common.atomic import atomic_dir, atomic_file, atomic_path, atomic_write, publish_dir


def test_atomic_write_replaces_with_the_usual_mode(tmp_path):
    path = tmp_path / "a.txt"
    atomic_write(path, "old")
    atomic_write(path, "new")
    assert path.read_text() == "new"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]  # no temp left behind


@pytest.mark.parametrize("writer", ["file", "path"])
def test_a_failed_write_keeps_the_old_file(tmp_path, writer):
    path = tmp_path / "a.bin"
    atomic_write(path, b"old")
    with pytest.raises(OSError, match="disk full"):
        if writer == "file":
            with atomic_file(path) as f:
                f.write(b"half")
                raise OSError(28, "disk full")
        else:
            with atomic_path(path) as tmp:
                tmp.write_bytes(b"half")
                raise OSError(28, "disk full")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_publish_dir_replaces_a_whole_directory(tmp_path):
    final = tmp_path / "step-3"
    with atomic_dir(final) as tmp:
        (tmp / "x").write_text("1")
        (tmp / "y").write_text("1")
    new = tmp_path / "new"
    new.mkdir()
    (new / "x").write_text("2")
    publish_dir(new, final)
    assert sorted(p.name for p in final.iterdir()) == ["x"] and (final / "x").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-3"]  # old copy and temp gone


def test_a_failed_atomic_dir_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "x").write_text("half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
