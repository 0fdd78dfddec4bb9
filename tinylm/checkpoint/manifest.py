"""A checkpoint's manifest: every file's size and digest, written last, checked before use.

safetensors has no checksum: a bit flip, or a file cut short by a full disk on another
machine, would load as if it were good. So each checkpoint directory gets ``manifest.json``
after all its other files: their sizes and xxh3-128 digests. xxh3 is not a cryptographic
hash, and needs not be: the manifest guards against accidents (flips, truncation, a file
swapped by a half-finished copy), and it costs 6% of a gpt2-small save where sha256 costs
34% and blake2b 42% (``python benchmarks/bench_digest.py``, docs/reliability.md).

This module knows files, not checkpoints: :mod:`tinylm.checkpoint.format` decides what a
failed check means (an error for a checkpoint named explicitly, a fallback for
``checkpoint.resume=auto``).
"""

from __future__ import annotations

import json
from pathlib import Path

import xxhash

from tinylm.common.atomic import atomic_write

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "tinylm-manifest-1"
_CHUNK = 1 << 24  # 16 MiB reads: no file is ever in memory whole


def file_digest(path: Path) -> str:
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def _files(ckpt_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(ckpt_dir)) for p in ckpt_dir.rglob("*")
                  if p.is_file() and p.name != MANIFEST_FILE)


def write_manifest(ckpt_dir: str | Path) -> None:
    """Record every file under ``ckpt_dir`` (atomically, after them: its presence means they
    were all complete when it was written)."""
    ckpt_dir = Path(ckpt_dir)
    files = {name: {"bytes": (ckpt_dir / name).stat().st_size,
                    "xxh3_128": file_digest(ckpt_dir / name)} for name in _files(ckpt_dir)}
    atomic_write(ckpt_dir / MANIFEST_FILE, json.dumps(
        {"format": MANIFEST_FORMAT, "files": files}, indent=1) + "\n")


def problems(ckpt_dir: str | Path) -> list[str] | None:
    """What does not match the manifest, one line each ([] when everything does); None when
    there is no manifest (a checkpoint of tinylm 0.1)."""
    ckpt_dir = Path(ckpt_dir)
    path = ckpt_dir / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
        files = manifest["files"]
        assert manifest["format"] == MANIFEST_FORMAT and isinstance(files, dict)
    except (ValueError, KeyError, TypeError, AssertionError, UnicodeDecodeError):
        return [f"{path}: not a {MANIFEST_FORMAT} manifest"]
    found = []
    for name, want in sorted(files.items()):
        f = ckpt_dir / name
        if not f.is_file():
            found.append(f"{f}: missing (the manifest lists it)")
        elif f.stat().st_size != want["bytes"]:
            found.append(f"{f}: {f.stat().st_size} bytes, the manifest says {want['bytes']} "
                         "(truncated or replaced)")
        elif file_digest(f) != want["xxh3_128"]:
            found.append(f"{f}: its digest does not match the manifest (corrupt)")
    return found
