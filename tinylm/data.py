"""Data: a source becomes a tokenizer and two flat token files; batches are cut from those.

``prepare(cfg)`` writes, under ``<dir>/<source>-v<vocab>-<hash>/``::

    tokenizer.json   byte-level BPE trained on the corpus
    train.bin        token ids, uint16 when vocab < 65536 else uint32, documents joined by EOT
    val.bin          the last ``val_fraction`` of the token stream (or a separate val_source)
    meta.json        sizes, dtype, UTF-8 byte counts of each split, the config fingerprint

A second ``prepare`` with the same config (and unchanged source files) reuses the directory.
Tokenizing runs through ``datasets.Dataset.map(batched=True)``, cached under HF_HOME, and the
token files are written in chunks: nothing holds the corpus in memory whole.

Batches: :class:`TrainBatches` for training (shuffled packed windows, resumable, sharded),
:class:`EvalBlocks` for evaluation (sequential blocks that cover a split exactly once).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from tinylm.corpus import DataError, describe, load_documents
from tinylm.tokenizer import Tokenizer

FORMAT = 1  # bump when the prepared layout changes, so old dirs are not reused


@dataclass
class DataConfig:
    source: str = "python-docs"  # built-in offline corpus; or a file, folder, glob, or Hub name
    hf_split: str = "train"  # split of a Hub / save_to_disk dataset
    hf_text_column: str = "text"  # column holding the text in table-like sources
    hf_config: Optional[str] = None  # Hub dataset config name, if it has several
    val_source: Optional[str] = None  # a separate validation source; None = tail of the stream
    val_fraction: float = 0.1  # nanoGPT's split: the last 10% of the stream is validation
    vocab_size: int = 8192  # BPE merges; ~4 bytes/token on English at this size
    dir: str = "data"  # root of prepared outputs (gitignored)
    tokenize_batch: int = 64  # rows per map() batch; rows are ~1 MB chunks or one document


@dataclass
class PreparedData:
    dir: Path
    meta: dict

    @property
    def train_path(self) -> Path:
        return self.dir / "train.bin"

    @property
    def val_path(self) -> Path:
        return self.dir / "val.bin"

    @property
    def tokenizer_path(self) -> Path:
        return self.dir / "tokenizer.json"

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.meta["dtype"])

    def tokenizer(self) -> Tokenizer:
        return Tokenizer.load(self.tokenizer_path)


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size < 65536 else np.uint32)


def _fingerprint(cfg: DataConfig) -> str:
    keys = {k: v for k, v in asdict(cfg).items() if k not in ("dir", "tokenize_batch")}
    info = {"format": FORMAT, "cfg": keys, "source": describe(cfg.source),
            "val": describe(cfg.val_source) if cfg.val_source else None}
    return hashlib.sha256(json.dumps(info, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _slug(source: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(source.rstrip("/")).name or source)[:40] or "corpus"


def _atomic_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def _tokenize(rows, tok: Tokenizer, batch: int):
    """rows -> rows of ``ids`` (EOT appended at document ends), cached by datasets."""
    eot = tok.eot_id

    def encode(b):
        ids = tok.encode_batch(b["text"])
        return {"ids": [x + [eot] if end else x for x, end in zip(ids, b["doc_end"])]}

    return rows.map(encode, batched=True, batch_size=batch, remove_columns=rows.column_names,
                    desc="tokenizing", new_fingerprint=f"tok-{rows._fingerprint}-{tok.fingerprint()}")


def _write_tokens(tokenized, out: dict[str, Path], sizes: dict[str, int], dtype, token_bytes):
    """Stream ids into the split files in order: the first ``sizes[name]`` ids to each."""
    counts = {name: 0 for name in out}
    nbytes = {name: 0 for name in out}
    tmps = {name: p.with_name(f".{p.name}.tmp") for name, p in out.items()}
    files = {name: open(t, "wb") for name, t in tmps.items()}
    names = list(out)
    try:
        i = 0
        for batch in tokenized.iter(batch_size=256):
            for ids in batch["ids"]:
                arr = np.asarray(ids, dtype=np.int64)
                while arr.size:
                    name = names[i]
                    take = min(arr.size, sizes[name] - counts[name])
                    part, arr = arr[:take], arr[take:]
                    files[name].write(part.astype(dtype).tobytes())
                    counts[name] += take
                    nbytes[name] += int(token_bytes[part].sum())
                    if counts[name] == sizes[name] and i + 1 < len(names):
                        i += 1
    finally:
        for f in files.values():
            f.close()
    for name in out:
        os.replace(tmps[name], out[name])
    return counts, nbytes


def _prepare(cfg: DataConfig) -> PreparedData:
    if not 0.0 <= cfg.val_fraction < 1.0:
        raise DataError(f"data.val_fraction={cfg.val_fraction}: expected 0 <= value < 1")
    fp = _fingerprint(cfg)
    out_dir = Path(cfg.dir) / f"{_slug(cfg.source)}-v{cfg.vocab_size}-{fp}"
    meta_path = out_dir / "meta.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("fingerprint") == fp:
            return PreparedData(out_dir, meta)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = os.path.join(cfg.dir, ".cache")
    load = dict(hf_split=cfg.hf_split, hf_text_column=cfg.hf_text_column, hf_config=cfg.hf_config,
                cache_dir=cache)
    rows = load_documents(cfg.source, **load)
    val_rows = load_documents(cfg.val_source, **load) if cfg.val_source else None

    texts = (r["text"] for ds in (rows, val_rows) if ds is not None for r in ds)
    tok = Tokenizer.train(texts, cfg.vocab_size)
    tok.save(out_dir / "tokenizer.json")
    dtype, token_bytes = token_dtype(tok.vocab_size), tok.token_bytes()

    tokenized = _tokenize(rows, tok, cfg.tokenize_batch)
    lengths = [len(x) for b in tokenized.iter(batch_size=1024) for x in b["ids"]]
    total, n_docs = sum(lengths), sum(1 for r in rows.select_columns(["doc_end"]) if r["doc_end"])
    if total - n_docs <= 0:  # nothing but end-of-text tokens
        raise DataError(f"data.source={cfg.source!r}: the corpus is empty (0 bytes of text)")
    paths = {"train": out_dir / "train.bin", "val": out_dir / "val.bin"}
    if val_rows is None:
        val_n = int(total * cfg.val_fraction)
        counts, nbytes = _write_tokens(tokenized, paths, {"train": total - val_n, "val": val_n},
                                       dtype, token_bytes)
    else:
        counts, nbytes = _write_tokens(tokenized, {"train": paths["train"]}, {"train": total},
                                       dtype, token_bytes)
        vt = _tokenize(val_rows, tok, cfg.tokenize_batch)
        vtotal = sum(len(x) for b in vt.iter(batch_size=1024) for x in b["ids"])
        vc, vb = _write_tokens(vt, {"val": paths["val"]}, {"val": vtotal}, dtype, token_bytes)
        counts.update(vc)
        nbytes.update(vb)
    meta = {"fingerprint": fp, "format": FORMAT, "source": cfg.source, "val_source": cfg.val_source,
            "vocab_size": tok.vocab_size, "eot_id": tok.eot_id, "dtype": dtype.name,
            "train_tokens": counts["train"], "val_tokens": counts["val"],
            "train_bytes": nbytes["train"], "val_bytes": nbytes["val"],
            "bytes_note": "UTF-8 bytes of the text each split decodes to, end-of-text tokens excluded"}
    _atomic_json(meta_path, meta)  # written last: its presence means the dir is complete
    return PreparedData(out_dir, meta)


def prepare(cfg: DataConfig, accelerator=None) -> PreparedData:
    """Prepare (or reuse) the tokenizer and token files for ``cfg``.

    Under accelerate the main process prepares while the others wait, then they reuse its
    output (``main_process_first``).
    """
    ctx = accelerator.main_process_first() if accelerator is not None else contextlib.nullcontext()
    with ctx:
        return _prepare(cfg)


def load_tokens(path: str | Path, dtype) -> np.ndarray:
    """A read-only memory map of a token file: nothing is read until it is indexed."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: token file not found (run scripts/prepare_data.py)")
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


class TrainBatches:
    """Infinite (x, y) batches of shuffled packed windows, sharded over processes, resumable.

    Each epoch draws a random offset in [0, block_size) and cuts the stream from it into
    windows of block_size + 1 tokens that overlap by one (the last target of a window is the
    first input of the next), so every token is a target exactly once per epoch; the offset
    shifts the window boundaries between epochs. The windows are permuted by a generator seeded
    with (seed, epoch), identical on every process; process r takes slices r, r + world, ... of
    that order, so processes never see the same window in an epoch. The position is just
    (epoch, batch): ``state_dict`` / ``load_state_dict`` resume exactly, with no replay.
    """

    def __init__(self, path, block_size: int, batch_size: int, rank: int = 0,
                 world_size: int = 1, seed: int = 0, dtype=np.uint16) -> None:
        self.tokens = load_tokens(path, dtype)
        self.path, self.T, self.B = Path(path), block_size, batch_size
        self.rank, self.world, self.seed = rank, world_size, seed
        self.epoch, self.batch = 0, 0
        n, need = len(self.tokens), (block_size) * batch_size * world_size + block_size + 1
        if n < need:
            raise DataError(
                f"{self.path}: {n} tokens is too small for one batch of {batch_size} x "
                f"{block_size + 1} tokens on {world_size} process(es) (need {need}); use a "
                "bigger corpus or smaller model.block_size / optim.batch_size")
        self._order: torch.Tensor | None = None

    def _epoch_order(self) -> tuple[int, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        offset = int(torch.randint(0, self.T, (1,), generator=g))
        n_windows = (len(self.tokens) - offset - 1) // self.T
        return offset, torch.randperm(n_windows, generator=g)

    def batches_per_epoch(self) -> int:
        _, order = self._epoch_order()
        return len(order) // (self.B * self.world)

    def __iter__(self) -> "TrainBatches":
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        offset, order = self._epoch_order() if self._order is None else self._order
        self._order = (offset, order)
        per_epoch = len(order) // (self.B * self.world)
        if self.batch >= per_epoch:
            self.epoch, self.batch, self._order = self.epoch + 1, 0, None
            return next(self)
        first = (self.batch * self.world + self.rank) * self.B
        starts = offset + order[first:first + self.B].numpy() * self.T
        rows = np.stack([self.tokens[s:s + self.T + 1] for s in starts]).astype(np.int64)
        self.batch += 1
        t = torch.from_numpy(rows)
        return t[:, :-1], t[:, 1:]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch, "seed": self.seed,
                "world_size": self.world, "block_size": self.T, "batch_size": self.B}

    def load_state_dict(self, state: dict) -> None:
        for key, mine in (("world_size", self.world), ("block_size", self.T), ("batch_size", self.B)):
            if state.get(key, mine) != mine:
                raise DataError(f"data position was saved with {key}={state[key]}, now {mine}: "
                                "resume with the same processes, block and batch size")
        self.epoch, self.batch, self.seed, self._order = state["epoch"], state["batch"], state["seed"], None


class EvalBlocks(Dataset):
    """Sequential non-overlapping blocks covering a split once.

    Item i is (x, y) with x = tokens[iT : iT+T] and y = tokens[iT+1 : iT+T+1]; the last block
    is padded (x with 0, y with -100, the ignore index), so every token after the first is
    predicted exactly once.
    """

    def __init__(self, path, block_size: int, dtype=np.uint16) -> None:
        self.tokens = load_tokens(path, dtype)
        self.T = block_size
        if len(self.tokens) < 2:
            raise DataError(f"{path}: {len(self.tokens)} tokens; evaluation needs at least 2")

    def __len__(self) -> int:
        return -(-(len(self.tokens) - 1) // self.T)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        chunk = torch.from_numpy(self.tokens[i * self.T: i * self.T + self.T + 1].astype(np.int64))
        x = torch.zeros(self.T, dtype=torch.long)
        y = torch.full((self.T,), -100, dtype=torch.long)
        x[: len(chunk) - 1], y[: len(chunk) - 1] = chunk[:-1], chunk[1:]
        return x, y
