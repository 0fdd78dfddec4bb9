"""The sharded token store: units tokenized into shards, each with a completion marker, sealed
by a manifest written last.

A store directory, while it is being prepared::

    plan.json            the units (see units.py), the reading spec, dtype, tokenizer hash
    tokenizer.json       the tokenizer every unit uses
    train-00000.bin      unit 0's ids of the source (val-00000.bin: of ``val_source``):
                         headerless uint16/uint32 as before, np.memmap-compatible, each
                         document followed by <|endoftext|>
    train-00000.json     unit 0's completion marker: tokens, bytes of text, documents, sha256

and once sealed, ``manifest.json`` (atomically, last): dtype, vocab, the tokenizer's hash, the
sources and their fingerprints, every shard (tokens, bytes, sha256), and the splits as token
ranges of shards. The validation split taken from the tail of the source (nanoGPT's
``val_fraction``) is a range of the last shard(s), not a copy. ``fingerprint`` is a hash of
what training reads (dtype, tokenizer, every shard's sha256, the splits), not of where the text
came from: checkpoints record it, so a resume against changed tokens is refused, while a copied,
moved or touched corpus that gives the same tokens resumes.

Every unit is independent and idempotent: ``tokenize_unit`` writes its shard under a temporary
name, renames it, then writes its marker; a finished unit is skipped. A preparation killed at
any point (SIGKILL, a full disk, a cluster job's time limit) reruns only the missing units.
Any process, on any machine sharing the directory, may run any unit: a local process pool,
datatrove's tasks (cluster.py) or a single loop all produce the same bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Callable, Iterable, Optional

import numpy as np

from tinylm.common.atomic import atomic_file, atomic_write
from tinylm.data.corpus import DataError
from tinylm.data.stream import remember_verified
from tinylm.data.tokenizer import Tokenizer
from tinylm.data.units import SourceSpec, Unit, plan_units, unit_rows

STORE_FORMAT = 2  # 1 was one train.bin + val.bin + meta.json (still loaded, see stream.py)
ENCODE_CHARS = 1 << 22  # at most ~4 MB of text per encode_batch call: 256 rows of 16 KB


def write_plan(store: Path, units: dict[str, list[Unit]], specs: dict[str, SourceSpec],
               tok: Tokenizer, dtype: np.dtype, extra: dict) -> dict:
    """``plan.json``: what every unit's worker needs to know, written before any unit runs."""
    plan = {"format": STORE_FORMAT, "dtype": dtype.name, "tokenizer": tok.content_hash(),
            "eot_id": tok.eot_id,
            "specs": {split: spec.__dict__ for split, spec in specs.items()},
            "units": [{"split": split, "shard": f"{split}-{u.index:05d}.bin", **u.to_dict()}
                      for split, us in units.items() for u in us], **extra}
    tok.save(store / "tokenizer.json")
    atomic_write(store / "plan.json", json.dumps(plan, indent=1))
    return plan


def read_plan(store: Path) -> dict:
    try:
        return json.loads((Path(store) / "plan.json").read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{store}/plan.json: unreadable ({type(e).__name__}); rerun prepare") from None


def unit_count(store: Path) -> int:
    """How many units the store's plan has: a cluster runs this many tasks' worth."""
    return len(read_plan(store)["units"])


def read_marker(store: Path, shard: str) -> Optional[dict]:
    """The unit's marker if its shard is complete (marker present, shard the recorded size)."""
    try:
        marker = json.loads((store / shard).with_suffix(".json").read_text())
        if (store / shard).stat().st_size != marker["tokens"] * np.dtype(marker["dtype"]).itemsize:
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return marker


def _batches(rows: Iterable[tuple[str, bool]], batch_rows: int):
    """Rows in lists of ``batch_rows`` (or ENCODE_CHARS characters): one ``encode_batch`` each."""
    texts, ends, chars = [], [], 0
    for text, end in rows:
        texts.append(text)
        ends.append(end)
        chars += len(text)
        if len(texts) >= batch_rows or chars >= ENCODE_CHARS:
            yield texts, ends
            texts, ends, chars = [], [], 0
    if texts:
        yield texts, ends


def encode_rows(rows: Iterable[tuple[str, bool]], tok: Tokenizer, dtype: np.dtype, f: IO[bytes],
                batch_rows: int = 256, progress: Optional[Callable[[int], None]] = None,
                max_tokens: Optional[int] = None) -> dict:
    """Encode ``(text, doc_end)`` rows into ``f`` as ``dtype`` ids, end-of-text after each
    non-empty document; stop after ``max_tokens``. Returns tokens, bytes of text (per token,
    from the byte-level vocabulary), documents and the sha256 of what was written.

    Pipelined: batch k+1 is read and encoded (Rust, without the GIL) while batch k is
    flattened, counted, hashed and written, so that Python work is off the critical path
    (it was ~7% of a unit's time when it ran in between)."""
    token_bytes, eot = tok.token_bytes(), tok.eot_id
    digest, stats = hashlib.sha256(), {"tokens": 0, "bytes": 0, "documents": 0}

    def write(ids: list[list[int]], texts: list[str], ends: list[bool]) -> bool:
        for x, t, end in zip(ids, texts, ends):
            if end and t:
                x.append(eot)
        flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype,
                           count=sum(map(len, ids)))
        if max_tokens is not None:
            flat = flat[: max_tokens - stats["tokens"]]
        buf = flat.tobytes()
        f.write(buf)
        digest.update(buf)
        stats["tokens"] += flat.size
        stats["bytes"] += int(token_bytes[flat].sum())
        stats["documents"] += int(np.count_nonzero(flat == eot))
        if progress is not None:
            progress(stats["bytes"])
        return max_tokens is not None and stats["tokens"] >= max_tokens

    with ThreadPoolExecutor(1) as encoder:
        pending = None
        for texts, ends in _batches(rows, batch_rows):
            job = (encoder.submit(tok.encode_batch, texts), texts, ends)
            if pending is not None and write(pending[0].result(), *pending[1:]):
                pending = None
                break
            pending = job
        if pending is not None:
            write(pending[0].result(), *pending[1:])
    return {**stats, "sha256": digest.hexdigest()}


def tokenize_unit(store: Path, index: int,
                  progress: Optional[Callable[[int], None]] = None) -> dict:
    """Tokenize unit ``index`` of the store's plan into its shard (skipped when already done).

    ``progress(n)`` is called with the bytes of text tokenized so far in this unit. Returns
    the unit's marker.
    """
    store = Path(store)
    plan = read_plan(store)
    entry = plan["units"][index]
    shard, dtype = entry["shard"], np.dtype(plan["dtype"])
    if (done := read_marker(store, shard)) is not None:
        return done
    tok = Tokenizer.load(store / "tokenizer.json")
    if tok.content_hash() != plan["tokenizer"]:
        raise DataError(f"{store}/tokenizer.json: not the tokenizer plan.json was made with")
    unit, spec = Unit.from_dict(entry), SourceSpec(**plan["specs"][entry["split"]])
    cap = plan.get("max_tokens") if entry["split"] == "train" else None
    with atomic_file(store / shard) as f:
        stats = encode_rows(unit_rows(unit, spec), tok, dtype, f, plan["batch_rows"], progress, cap)
    marker = {"unit": index, "shard": shard, "split": entry["split"], "dtype": dtype.name,
              **stats, "input_bytes": unit.size}
    atomic_write((store / shard).with_suffix(".json"), json.dumps(marker))
    return marker


def tokenize_source(spec: SourceSpec, tok: Tokenizer, path: Path, dtype: np.dtype) -> dict:
    """Any source into one token file, in this process, by the rule a store's units follow
    (evaluation of a checkpoint on a corpus it never saw). Returns encode_rows' stats."""
    from_units = (unit_rows(u, spec) for u in plan_units(spec, 1 << 62))
    with atomic_file(path) as f:
        return encode_rows(itertools.chain.from_iterable(from_units), tok, dtype, f)


# -- sealing ---------------------------------------------------------------------------------

def _range_stats(store: Path, shard: str, start: int, end: int, dtype: np.dtype,
                 tok: Tokenizer) -> tuple[int, int]:
    """(text bytes, documents) of tokens [start, end) of a shard, read from disk."""
    ids = np.memmap(store / shard, dtype=dtype, mode="r")[start:end]
    return int(tok.token_bytes()[ids].sum()), int(np.count_nonzero(ids == tok.eot_id))


def _take(shards: list[dict], n: int) -> tuple[list[list], list[list]]:
    """Cut the concatenated shards at token ``n``: (ranges before, ranges after)."""
    head, tail, at = [], [], 0
    for s in shards:
        a, b = at, at + s["tokens"]
        if b <= n:
            head.append([s["shard"], 0, s["tokens"]])
        elif a >= n:
            tail.append([s["shard"], 0, s["tokens"]])
        else:
            head.append([s["shard"], 0, n - a])
            tail.append([s["shard"], n - a, s["tokens"]])
        at = b
    return [r for r in head if r[2] > r[1]], [r for r in tail if r[2] > r[1]]


def _split_stats(store: Path, ranges: list[list], markers: dict, dtype, tok) -> dict:
    tokens = sum(b - a for _, a, b in ranges)
    nbytes = docs = 0
    for shard, a, b in ranges:
        m = markers[shard]
        if a == 0 and b == m["tokens"]:
            nbytes, docs = nbytes + m["bytes"], docs + m["documents"]
        else:
            rb, rd = _range_stats(store, shard, a, b, dtype, tok)
            nbytes, docs = nbytes + rb, docs + rd
    return {"tokens": tokens, "bytes": nbytes, "documents": docs}


def seal(store: Path, max_tokens: Optional[int] = None) -> dict:
    """Check every unit is done, cut the splits and write ``manifest.json`` (last, atomically).

    ``max_tokens`` caps the source's tokens (the first ones, in unit order): the units past
    the cap need not have run. Returns the manifest."""
    store = Path(store)
    plan = read_plan(store)
    tok, dtype = Tokenizer.load(store / "tokenizer.json"), np.dtype(plan["dtype"])
    markers: dict[str, dict] = {}
    shards = {"train": [], "val": []}
    for i, entry in enumerate(plan["units"]):
        taken = sum(m["tokens"] for m in shards[entry["split"]])
        if entry["split"] == "train" and max_tokens is not None and taken >= max_tokens:
            continue  # past the cap: not needed
        marker = read_marker(store, entry["shard"])
        if marker is None:
            raise DataError(f"{store / entry['shard']}: unit {i} is not done; "
                            "rerun prepare (finished units are kept)")
        markers[entry["shard"]] = marker
        shards[entry["split"]].append(marker)
    train_all, val = _take(shards["train"], max_tokens if max_tokens is not None else 1 << 62)[0], None
    total = sum(b - a for _, a, b in train_all)
    if shards["val"]:
        train, val = train_all, [[m["shard"], 0, m["tokens"]] for m in shards["val"]]
    else:
        n_train = int(total * (1 - plan["val_fraction"]))  # nanoGPT: data[:int(n*0.9)] trains
        cut = [{"shard": s, "tokens": b} for s, a, b in train_all]  # ranges start at 0 here
        train, val = _take(cut, n_train)
    splits = {"train": train, "val": val}
    stats = {k: _split_stats(store, v, markers, dtype, tok) for k, v in splits.items()}
    n_train, n_val = stats["train"]["tokens"], stats["val"]["tokens"]
    if n_train < 2 or (n_val < 2 and (shards["val"] or plan["val_fraction"] > 0)):
        raise DataError(f"data.source={plan['source']!r}: too small to split: {total} tokens "
                        f"give {n_train} train and {n_val} val tokens (each needs >= 2)")
    used = sorted({r[0] for rs in splits.values() for r in rs})
    content = {
        "format": STORE_FORMAT, "dtype": dtype.name, "vocab_size": tok.vocab_size,
        "eot_id": tok.eot_id, "eot_token": tok.eot_token, "tokenizer": plan["tokenizer"],
        "sources": plan["sources"], "max_tokens": max_tokens,
        "shards": [{k: markers[s][k] for k in ("shard", "tokens", "bytes", "documents", "sha256")}
                   for s in used],
        "splits": splits}
    trained_on = {k: v for k, v in content.items() if k not in ("format", "sources")}
    fingerprint = hashlib.sha256(json.dumps(trained_on, sort_keys=True).encode()).hexdigest()[:16]
    manifest = {**content, "fingerprint": fingerprint, "key": plan["key"],
                "source": plan["source"], "val_source": plan["val_source"],
                "val_fraction": None if shards["val"] else plan["val_fraction"],
                **{f"{k}_{f}": v[f] for k, v in stats.items() for f in ("tokens", "bytes", "documents")},
                "bytes_note": "UTF-8 bytes of the text each split's tokens stand for; end-of-text "
                              "tokens excluded. Bits per byte = nats / (ln 2 * bytes).",
                "config": plan["config"]}
    atomic_write(store / "manifest.json", json.dumps(manifest, indent=1))  # last: sealed
    remember_verified(store, manifest)
    return manifest


def remove_stale(store: Path) -> None:
    """Before new units run: drop an old manifest (it must not vouch for other files) and the
    temporary files of writers that were killed (SIGKILL skips their clean-up)."""
    for path in [Path(store) / "manifest.json", *Path(store).glob(".*.tmp")]:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
