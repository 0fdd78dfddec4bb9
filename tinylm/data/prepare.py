"""Data: a source becomes a tokenizer and a sharded token store; batches are cut from that.

``prepare(cfg)`` writes, under ``<cfg.dir>/<source>-v<vocab_size>-<key>/``, the store of
``store.py``: ``tokenizer.json``, ``train-NNNNN.bin`` shards (and ``val-NNNNN.bin`` for a
``val_source``), a marker per shard, and ``manifest.json`` last. The steps:

1. plan: the source is split into units (units.py), deterministic from the source and
   ``data.shard_bytes`` alone, never from the worker count;
2. tokenizer: ``data.tokenizer`` if given, else a byte-level BPE trained on the whole corpus
   when it fits in ``data.tokenizer_sample`` characters, or on a sample of that size spread
   over all units (each document cut at ``data.tokenizer_doc_chars``, as nanochat does; a
   text file's ~16 KB rows count as its documents), so memory and time stay bounded;
3. units: tokenized by ``data.workers`` processes (one per core by default; not
   ``datasets.map(num_proc)``, whose fork turns off the tokenizer's threads), text streamed
   straight into shards; or by any ``run_units`` given (datatrove's executors, cluster.py);
4. seal: the splits are cut and the manifest written. The last ``val_fraction`` of the token
   stream validates (nanoGPT's split), unless a ``val_source`` is given.

The prepared key covers the config and the source's identity (file sizes and mtimes, the
Python version for python-docs, the name for a Hub dataset), so a second ``prepare`` with the
same config reuses the store in milliseconds, a killed one reruns only its missing units, and
any change prepares a new one (old stores stay valid for the checkpoints that name them).

Bytes: ``train_bytes``/``val_bytes`` are the UTF-8 bytes of the text each split's tokens stand
for, end-of-text tokens excluded, counted per token from the byte-level vocabulary, so the two
add up to the corpus's bytes exactly. Evaluation divides nats by these for bits per byte.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import tokenizers

from tinylm.data.config import DataConfig, MixtureSource, given_tokenizer
from tinylm.data.corpus import DataError, describe
from tinylm.data.plan import plan, train_tokenizer
from tinylm.data.pool import run_units_locally, tokenizer_threads
from tinylm.data.store import read_plan, remove_stale, seal, write_plan
from tinylm.data.stream import TokenStream, check_store, split_stream
from tinylm.data.tokenizer import Tokenizer

__all__ = ["DataConfig", "DataError", "MixtureSource", "PreparedData", "open_prepared", "prepare"]

PREPARED_FORMAT = 2  # bump when the prepared layout changes, so old dirs are not reused


@dataclass
class PreparedData:
    """A prepared store and its manifest (or a 0.2 dir and its meta.json)."""

    dir: Path
    meta: dict

    @property
    def tokenizer_path(self) -> Path:
        return self.dir / "tokenizer.json"

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.meta["dtype"])

    @property
    def fingerprint(self) -> str:
        """The data's identity: the manifest's hash (checkpoints record it)."""
        return self.meta.get("fingerprint") or self.meta.get("key", "")

    def split(self, name: str) -> TokenStream:
        """The ``train`` or ``val`` split as one array over its shards."""
        return split_stream(self.dir, self.meta, name)

    def tokenizer(self) -> Tokenizer:
        return Tokenizer.load(self.tokenizer_path)


def open_prepared(store: str | Path) -> PreparedData:
    """A sealed store (manifest.json) or a tinylm 0.2 dir (meta.json), checked (stream.py)."""
    store = Path(store)
    for name in ("manifest.json", "meta.json"):
        if (store / name).is_file():
            try:
                meta = json.loads((store / name).read_text())
            except ValueError:
                raise DataError(f"{store / name}: not valid JSON; prepare again") from None
            check_store(store, meta)
            return PreparedData(store, meta)
    raise DataError(f"{store}: no prepared data (no manifest.json); run tinylm prepare")


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned type that holds every id: 2 bytes per token up to 65536."""
    return np.dtype(np.uint16 if vocab_size <= 65536 else np.uint32)


_RUN_ONLY = ("dir", "tokenize_batch", "workers", "shuffle")  # how fast, not what: never in the key


def prepared_key(cfg: DataConfig) -> str:
    """What makes a prepared dir reusable: every field that changes its bytes."""
    keys = {k: v for k, v in asdict(cfg).items() if k not in _RUN_ONLY}
    keys.pop("mixture", None)  # a store is one source: a mixture's parts are prepared alone
    if cfg.val_source:
        keys.pop("val_fraction")
    given = given_tokenizer(cfg)
    if given is not None:  # the tokenizer's content, not its path, decides the token files
        keys["tokenizer"], keys["vocab_size"] = Tokenizer.load(given).content_hash(), None
    info = {"format": PREPARED_FORMAT, "tokenizers": tokenizers.__version__, "cfg": keys,
            "source": describe(cfg.source),
            "val": describe(cfg.val_source) if cfg.val_source else None}
    return hashlib.sha256(json.dumps(info, sort_keys=True, default=str).encode()).hexdigest()[:16]


def prepared_dir(cfg: DataConfig, key: Optional[str] = None) -> Path:
    """``<dir>/<name>-v<vocab>-<key>``: the name is the file or folder name (the last
    part without wildcards for a glob, ``owner_name`` for a Hub dataset); the key
    keeps two sources with the same name apart."""
    if Path(cfg.source).expanduser().exists() or any(c in cfg.source for c in "*?["):
        parts = [p for p in Path(cfg.source).parts if not any(c in p for c in "*?[")]
        name = parts[-1] if parts else "corpus"
    else:
        name = cfg.source.removeprefix("hf://")
    slug = re.sub(r"[^A-Za-z0-9.-]+", "_", name).strip("_.")[-40:] or "corpus"
    vocab = f"v{cfg.vocab_size}" if not cfg.tokenizer else "given-tokenizer"
    return Path(cfg.dir) / f"{slug}-{vocab}-{(key or prepared_key(cfg))[:8]}"


def _reusable(out: Path, key: str) -> Optional[PreparedData]:
    """The sealed store at ``out`` if it was sealed for ``key`` (then checked, see stream.py)."""
    try:
        meta = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if meta.get("key") != key:
        return None
    check_store(out, meta)  # a damaged shard is an error, not a silent re-prepare
    return PreparedData(out, meta)


# -- prepare -----------------------------------------------------------------------------------

RunUnits = Callable[[Path, int], bool]  # (store, number of units) -> True when all ran


def _plan_store(cfg: DataConfig, out: Path, key: str, progress: bool) -> int:
    """Write plan.json and tokenizer.json (reused when a killed run left them); -> units."""
    if (out / "plan.json").is_file() and (out / "tokenizer.json").is_file():
        try:
            existing = read_plan(out)
            if existing.get("key") == key:
                return len(existing["units"])
        except DataError:
            pass
    units = plan(cfg)
    tok = train_tokenizer(cfg, units["train"], progress)
    specs = {split: cfg.spec(src) for split, src in (("train", cfg.source), ("val", cfg.val_source))
             if split in units}
    sources = [{"split": split, "source": spec.source,
                "fingerprint": hashlib.sha256(json.dumps(describe(spec.source), sort_keys=True,
                                                         default=str).encode()).hexdigest()[:16],
                "units": len(units[split])} for split, spec in specs.items()]
    extra = {"key": key, "source": cfg.source, "val_source": cfg.val_source,
             "val_fraction": cfg.val_fraction, "max_tokens": cfg.max_tokens,
             "batch_rows": cfg.tokenize_batch, "sources": sources, "config": asdict(cfg)}
    written = write_plan(out, units, specs, tok, token_dtype(tok.vocab_size), extra)
    return len(written["units"])


def _prepare(cfg: DataConfig, progress: bool, reuse_only: bool = False,
             run_units: Optional[RunUnits] = None) -> Optional[PreparedData]:
    key = prepared_key(cfg)
    out = prepared_dir(cfg, key)
    if (found := _reusable(out, key)) is not None:
        if progress:
            print(summary_line(found.meta, out))
        return found
    if reuse_only:
        raise DataError(f"{out}: no prepared data after the main process ran (on several "
                        "machines, put data.dir on a shared filesystem or run "
                        "tinylm prepare on each first)")
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    remove_stale(out)
    with tokenizer_threads():
        n = _plan_store(cfg, out, key, progress)
        done = (run_units or _local_runner(cfg, progress))(out, n)
    if not done:
        return None
    manifest = seal(out, cfg.max_tokens)
    if progress:
        print(summary_line(manifest, out, time.perf_counter() - t0))
    return PreparedData(out, manifest)


def _local_runner(cfg: DataConfig, progress: bool) -> RunUnits:
    def run(store: Path, n: int) -> bool:
        run_units_locally(store, n, workers=cfg.workers, progress=progress,
                          max_tokens=cfg.max_tokens)
        return True
    return run


def summary_line(manifest: dict, out: Path, wall: Optional[float] = None) -> str:
    """One line: vocab, tokens, bytes/token, and (when it was prepared now, ``wall`` s) MB/s
    of text end to end; a reused store says so instead."""
    m = manifest
    tokens, nbytes = m["train_tokens"] + m["val_tokens"], m["train_bytes"] + m["val_bytes"]
    speed = (f", {nbytes / 1e6 / max(wall, 1e-9):.2f} MB/s, {wall:.1f} s wall"
             if wall is not None else "")
    return (f"{'prepared' if wall is not None else 'reused'} {out}: vocab {m['vocab_size']} "
            f"({m['dtype']}), train {m['train_tokens']:,} tokens / {m['train_bytes']:,} bytes, "
            f"val {m['val_tokens']:,} tokens, {len(m.get('shards', [])) or 2} shard(s), "
            f"{nbytes / max(tokens, 1):.2f} bytes/token{speed}, fingerprint {m.get('fingerprint')}")


def prepare(cfg: DataConfig, accelerator=None, *, progress: bool = True,
            run_units: Optional[RunUnits] = None) -> Optional[PreparedData]:
    """Prepare (or reuse) the tokenizer and token store for ``cfg``.

    ``run_units(store, n)`` runs the n units somewhere else (datatrove, cluster.py) and says
    whether they are done (False: submitted to a cluster whose last step seals; then this
    returns None). Under accelerate the main process prepares inside
    ``main_process_first()`` while the others wait, then they only reuse its output. An error
    in the main process is re-raised by every process after the barrier.
    """
    if cfg.mixture:
        raise DataError("data.mixture is set: prepare it with tinylm.data.mixture.prepare_mixture")
    if accelerator is None:
        return _prepare(cfg, progress, run_units=run_units)
    result, error = None, None
    with accelerator.main_process_first():
        try:
            main = accelerator.is_main_process
            result = _prepare(cfg, progress and main, reuse_only=not main)
        except Exception as e:  # noqa: BLE001 - re-raised below, after the barrier
            error = e
    if error is not None:
        raise error
    return result

