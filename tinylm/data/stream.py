"""A split of a token store read as one array, and the store's checks on load.

A split is a list of token ranges of shards (``manifest.json``'s ``splits``). ``TokenStream``
memory-maps each shard and serves ``len`` and slices across shard boundaries, so batches
and evaluation read a sharded store exactly as they read one flat file; nothing is read until
it is indexed. A store written by tinylm 0.2 (one ``train.bin`` + ``val.bin`` + ``meta.json``)
opens as a store of two shards.

Checks on load: every shard must exist with the size the manifest records (always: a stat per
shard), and its sha256 must match (once per shard file: a verified shard's size and mtime are
remembered in ``verified.json``, so a 45 GB store is hashed on its first load, not on every
run's start; a shard rewritten since has a new mtime and is hashed again).
"""

from __future__ import annotations

import hashlib
import json
from bisect import bisect_right
from pathlib import Path

import numpy as np

from tinylm.common.atomic import atomic_write
from tinylm.data.corpus import DataError

HASH_CHUNK = 1 << 24


class TokenStream:
    """Token ranges ``[(path, start, end), ...]`` of flat token files, read as one array."""

    def __init__(self, parts: list[tuple[Path, int, int]], dtype: np.dtype) -> None:
        self.parts, self.dtype = [(Path(p), a, b) for p, a, b in parts], np.dtype(dtype)
        self._starts = np.cumsum([0] + [b - a for _, a, b in self.parts]).tolist()
        self._maps: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self._starts[-1]

    def _map(self, i: int) -> np.ndarray:
        if i not in self._maps:
            path, a, b = self.parts[i]
            self._maps[i] = np.memmap(path, dtype=self.dtype, mode="r")[a:b] if b > a \
                else np.zeros(0, self.dtype)
        return self._maps[i]

    def __getitem__(self, key: slice) -> np.ndarray:
        """``stream[a:b]``: tokens a..b-1 (a copy only when the slice spans two shards)."""
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("TokenStream supports contiguous slices only")
        a, b, _ = key.indices(len(self))
        if b <= a:
            return np.zeros(0, self.dtype)
        i = bisect_right(self._starts, a) - 1
        out = []
        while a < b:
            lo, hi = self._starts[i], self._starts[i + 1]
            if hi > a:
                out.append(self._map(i)[a - lo: min(b, hi) - lo])
                a = min(b, hi)
            i += 1
        return out[0] if len(out) == 1 else np.concatenate(out)

    def __repr__(self) -> str:
        return f"TokenStream({len(self):,} tokens in {len(self.parts)} range(s))"


def split_stream(store: Path, meta: dict, split: str) -> TokenStream:
    """The ``train`` or ``val`` split of a store (format 2) or of a 0.2 prepared dir."""
    store = Path(store)
    if "splits" in meta:
        return TokenStream([(store / s, a, b) for s, a, b in meta["splits"][split]], meta["dtype"])
    return TokenStream([(store / f"{split}.bin", 0, meta[f"{split}_tokens"])], meta["dtype"])


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(HASH_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def check_store(store: Path, meta: dict) -> None:
    """Every shard present, of its recorded size and (once per file version) its sha256; a
    shard that doesn't match is one ``DataError`` naming it."""
    store = Path(store)
    item = np.dtype(meta["dtype"]).itemsize
    if "shards" not in meta:  # a 0.2 dir: sizes only (it recorded no digests)
        for split in ("train", "val"):
            path, want = store / f"{split}.bin", meta[f"{split}_tokens"] * item
            size = path.stat().st_size if path.is_file() else None
            if size != want:
                raise DataError(f"{path}: {size} bytes, meta.json says {want}; prepare again")
        return
    try:
        stamps = json.loads((store / "verified.json").read_text())
    except (OSError, ValueError):
        stamps = {}
    fresh = {}
    for s in meta["shards"]:
        path = store / s["shard"]
        try:
            st = path.stat()
        except OSError:
            raise DataError(f"{path}: shard missing (manifest.json lists it); prepare again") from None
        if st.st_size != s["tokens"] * item:
            raise DataError(f"{path}: {st.st_size} bytes, manifest.json says "
                            f"{s['tokens'] * item}; the shard is damaged, prepare again")
        seen = [st.st_size, st.st_mtime_ns, s["sha256"]]
        if stamps.get(s["shard"]) != seen:
            if _sha256(path) != s["sha256"]:
                raise DataError(f"{path}: sha256 differs from manifest.json; the shard is "
                                "damaged, delete the store's directory and prepare again")
        fresh[s["shard"]] = seen
    if fresh != stamps:
        _write_stamps(store, fresh)


def _write_stamps(store: Path, stamps: dict) -> None:
    try:
        atomic_write(store / "verified.json", json.dumps(stamps))
    except OSError:  # a read-only store is hashed on every load instead
        pass


def remember_verified(store: Path, manifest: dict) -> None:
    """After sealing: the shards were hashed as they were written, so count them verified."""
    stamps = {}
    for s in manifest["shards"]:
        st = (Path(store) / s["shard"]).stat()
        stamps[s["shard"]] = [st.st_size, st.st_mtime_ns, s["sha256"]]
    _write_stamps(Path(store), stamps)
