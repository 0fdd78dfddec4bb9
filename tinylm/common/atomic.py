"""Atomic writes: a reader sees the old file (or directory) or the new one, never half of one.

Every module that writes goes through here: token files, tokenizer.json, config.yaml,
checkpoints, evaluation JSON, the loss plot. The recipe is always the same: write under a
temporary name in the same directory (so the rename never crosses a filesystem), flush and
fsync the data (so a power cut cannot leave a renamed but empty file), ``os.replace`` it onto
the final name, and fsync the directory (so the rename itself is durable). On any error the
temporary is removed and the old file is untouched.

Directories cannot be replaced in one rename when the target exists, so :func:`publish_dir`
renames the old one away first, then the new one into place, then deletes the old: at every
instant the final name holds a complete directory or nothing, never a mix.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Iterator


def _file_mode() -> int:
    """0666 less the process umask: the mode ``open()`` would give a new file."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _file_mode()


def fsync_dir(path: str | Path) -> None:
    """Make renames inside ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """``with atomic_path(p) as tmp: writer.save(tmp)``: for writers that want a file name
    (safetensors, matplotlib). ``p`` appears complete, with the usual file mode, or not at all."""
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)  # mkstemp makes 0600; give files the usual mode
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """``with atomic_file(p) as f: f.write(...)``: ``p`` appears complete, or not at all."""
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        yield f


def atomic_write(path: str | Path, data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` atomically."""
    with atomic_file(path) as f:
        f.write(data.encode() if isinstance(data, str) else data)


def publish_dir(tmp: str | Path, final: str | Path) -> Path:
    """Move the finished directory ``tmp`` to ``final``, replacing any directory there."""
    tmp, final = Path(tmp), Path(final)
    for f in tmp.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    old = final.with_name(f".{final.name}.old")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)
    return final


@contextlib.contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """``with atomic_dir(d) as tmp: (write files into tmp)``: then ``d`` is replaced whole."""
    final = Path(final)
    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        publish_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
