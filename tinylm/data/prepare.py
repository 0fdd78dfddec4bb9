"""Data: a source becomes a tokenizer and two flat token files; batches are cut from those.

``prepare(cfg)`` writes, under ``<cfg.dir>/<source>-v<vocab_size>-<key>/``::

    tokenizer.json   byte-level BPE trained on the source (not on a separate val_source)
    train.bin        token ids, uint16 when the vocab < 65536 else uint32, each document
                     followed by <|endoftext|>; np.memmap-compatible, no header
    val.bin          the last ``val_fraction`` of that token stream (nanoGPT's split), or the
                     whole ``val_source`` when one is given
    meta.json        vocab_size, eot_id, dtype, tokens and UTF-8 bytes of each split, source,
                     the prepared key (written last: its presence means "complete")

The prepared key covers the config and the source's identity (file sizes and mtimes, the Python
version for python-docs, the name for a Hub dataset), so a second ``prepare`` with the same
config reuses the directory in milliseconds and any change prepares a new one (old ones stay
valid for the checkpoints that name them; delete them freely). Tokenizing is a batched
``Dataset.map`` cached under HF_HOME; the token files are then written in chunks from the
memory-mapped arrow cache, so the corpus is never in memory whole. Every file is written under
a temporary name and renamed into place.

Bytes: ``train_bytes``/``val_bytes`` are the UTF-8 bytes of the text each split's tokens stand
for, end-of-text tokens excluded (they stand for no text), counted per token from the
byte-level vocabulary, so the two add up to the corpus's bytes exactly, even when the split
falls inside a multi-byte character. Evaluation divides nats by these for bits per byte.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import datasets
import numpy as np
import pyarrow.compute as pc
import tokenizers
from tqdm.auto import tqdm

from tinylm.common.atomic import atomic_file, atomic_write
from tinylm.data.corpus import DataError, describe, document_texts, load_documents, normalize
from tinylm.data.tokenizer import Tokenizer

__all__ = ["DataConfig", "DataError", "PreparedData", "prepare"]

PREPARED_FORMAT = 1  # bump when the prepared layout changes, so old dirs are not reused


@dataclass
class DataConfig:
    source: str = "python-docs"  # offline English prose on every Python; or a path, glob, Hub name
    hf_split: str = "train"  # the split nearly every dataset has (Hub and save_to_disk sources)
    hf_text_column: str = "text"  # the column name most text datasets use
    hf_config: Optional[str] = None  # Hub config name; None = the dataset's default
    val_source: Optional[str] = None  # None = validate on the stream's tail: no 2nd corpus needed
    val_fraction: float = 0.1  # nanoGPT's split: the last 10% of the token stream
    vocab_size: int = 8192  # ~4 bytes/token on English, and a head a CPU model can afford
    tokenizer: Optional[str] = None  # use this tokenizer (tokenizer.json, HF model dir, tinylm
    # checkpoint) instead of training a BPE: fine-tuning or distilling an imported model needs its ids
    dir: str = "data"  # root of prepared outputs (gitignored); one subdirectory per corpus+config
    tokenize_batch: int = 256  # rows per map() batch: enough for encode_batch's threads (measured)

    def __post_init__(self) -> None:  # OmegaConf.to_object runs this: bad values fail at load
        if not 0.0 <= self.val_fraction < 1.0:
            raise DataError(f"data.val_fraction={self.val_fraction}: expected 0 <= value < 1")
        if self.vocab_size < 257:
            raise DataError(f"data.vocab_size={self.vocab_size}: a byte-level BPE needs >= 257")
        if self.tokenize_batch < 1:
            raise DataError(f"data.tokenize_batch={self.tokenize_batch}: expected >= 1")


@dataclass
class PreparedData:
    """A prepared directory and its meta.json."""

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


def given_tokenizer(cfg: DataConfig) -> Optional[Path]:
    """The tokenizer.json ``data.tokenizer`` names (a file, or a directory holding one)."""
    if not cfg.tokenizer:
        return None
    path = Path(cfg.tokenizer)
    path = path / "tokenizer.json" if path.is_dir() else path
    if not path.is_file():
        raise DataError(f"data.tokenizer={cfg.tokenizer}: no tokenizer.json there")
    return path


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned type that holds every id: 2 bytes per token up to 65536."""
    return np.dtype(np.uint16 if vocab_size <= 65536 else np.uint32)


def prepared_key(cfg: DataConfig) -> str:
    """What makes a prepared dir reusable: every field that changes its bytes."""
    keys = {k: v for k, v in asdict(cfg).items() if k not in ("dir", "tokenize_batch")}
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
        name = cfg.source
    slug = re.sub(r"[^A-Za-z0-9.-]+", "_", name).strip("_.")[-40:] or "corpus"
    vocab = f"v{cfg.vocab_size}" if not cfg.tokenizer else "given-tokenizer"
    return Path(cfg.dir) / f"{slug}-{vocab}-{(key or prepared_key(cfg))[:8]}"


def _reusable_meta(out: Path, fp: str) -> Optional[dict]:
    """meta.json if the dir is complete for prepared key ``fp`` (files present, sizes right)."""
    try:
        meta = json.loads((out / "meta.json").read_text())
        item = np.dtype(meta["dtype"]).itemsize
        ok = (meta.get("fingerprint") == fp and (out / "tokenizer.json").is_file()
              and (out / "train.bin").stat().st_size == meta["train_tokens"] * item
              and (out / "val.bin").stat().st_size == meta["val_tokens"] * item)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return meta if ok else None


# -- tokenizing ------------------------------------------------------------------------------

def tokenize_rows(rows: datasets.Dataset, tok: Tokenizer, batch_size: int, dtype: np.dtype,
                  desc: str = "tokenizing",
                  cache_dir: Optional[str | Path] = None) -> datasets.Dataset:
    """rows -> rows of ``ids``, each document's last row followed by EOT (empty documents give
    nothing). A batched ``map`` whose arrow file is cached under HF_HOME (never inside the
    source), keyed by the rows' fingerprint and the tokenizer's content hash."""
    eot, raw = tok.eot_id, "doc_end" not in rows.column_names

    def encode(b: dict) -> dict:
        texts = [normalize(t or "") for t in b["text"]] if raw else b["text"]
        ends = [True] * len(texts) if raw else b["doc_end"]
        ids = tok.encode_batch(texts)
        return {"ids": [x + [eot] if end and t else x for x, t, end in zip(ids, texts, ends)]}

    key = f"{PREPARED_FORMAT}-{rows._fingerprint}-{tok.content_hash()}-{dtype}"
    fp = hashlib.sha256(key.encode()).hexdigest()[:16]
    root = Path(cache_dir) if cache_dir else Path(datasets.config.HF_DATASETS_CACHE) / "tinylm"
    cache = root / f"tokens-{fp}.arrow"
    cache.parent.mkdir(parents=True, exist_ok=True)
    features = datasets.Features({"ids": datasets.List(datasets.Value(dtype.name))})
    return rows.map(encode, batched=True, batch_size=batch_size, remove_columns=rows.column_names,
                    features=features, cache_file_name=str(cache), new_fingerprint=fp, desc=desc)


def _count(tokenized: datasets.Dataset) -> int:
    """Total ids, from the list offsets alone (no ids are read)."""
    if len(tokenized) == 0:
        return 0
    return int(pc.sum(pc.list_value_length(tokenized.data.column("ids"))).as_py() or 0)


def _write_splits(streams: list[tuple[datasets.Dataset, list[tuple[Path, int]]]], tok: Tokenizer,
                  dtype: np.dtype, progress: bool) -> dict[str, dict]:
    """Stream ids from each tokenized dataset into its files in order: the first n0 ids into the
    first file, the next n1 into the second... Chunks of rows, never the whole corpus."""
    token_bytes, stats = tok.token_bytes(), {}
    total = sum(n for _, files in streams for _, n in files)
    bar = tqdm(total=total, unit="tok", unit_scale=True, desc="writing", disable=not progress)
    with bar, contextlib.ExitStack() as files_open:
        for tokenized, files in streams:
            handles = []
            for path, n in files:
                handles.append((files_open.enter_context(atomic_file(path)), path, n))
                stats[path.stem] = {"tokens": 0, "bytes": 0, "documents": 0}
            i = 0
            for table in tokenized.with_format("arrow").iter(batch_size=256):
                arr = table.column("ids").combine_chunks().flatten().to_numpy(zero_copy_only=False)
                while arr.size and i < len(handles):
                    f, path, n = handles[i]
                    s = stats[path.stem]
                    part, arr = arr[: n - s["tokens"]], arr[n - s["tokens"]:]
                    f.write(part.astype(dtype, copy=False).tobytes())
                    s["tokens"] += part.size
                    s["bytes"] += int(token_bytes[part].sum())
                    s["documents"] += int(np.count_nonzero(part == tok.eot_id))
                    bar.update(part.size)
                    if s["tokens"] == n:
                        i += 1
    return stats


# -- prepare -----------------------------------------------------------------------------------

def _tokenizer_for(cfg: DataConfig, rows: datasets.Dataset, progress: bool) -> Tokenizer:
    """``data.tokenizer`` if one is given (it must be a byte-level BPE), else a BPE trained on
    ``rows``; an empty corpus is an error either way."""
    chars = [0]
    if (given := given_tokenizer(cfg)) is not None:
        tok = Tokenizer.load(given)
        if not tok.is_byte_level:
            raise DataError(f"data.tokenizer={cfg.tokenizer}: not a byte-level BPE: its ids "
                            "don't map to exact bytes, so bits per byte would be wrong")
        for _ in document_texts(rows, chars):  # counts the characters: an empty corpus is an error
            pass
    else:
        tok = Tokenizer.train(document_texts(rows, chars), cfg.vocab_size, show_progress=progress)
    if chars[0] == 0:
        raise DataError(f"data.source={cfg.source!r}: the corpus is empty "
                        f"(0 characters of text in {len(rows)} rows)")
    return tok


def _prepare(cfg: DataConfig, progress: bool, reuse_only: bool = False) -> PreparedData:
    fp = prepared_key(cfg)
    out = prepared_dir(cfg, fp)
    meta = _reusable_meta(out, fp)
    if meta is not None:
        return PreparedData(out, meta)
    if reuse_only:
        raise DataError(f"{out}: no prepared data after the main process ran (on several "
                        "machines, put data.dir on a shared filesystem or run "
                        "scripts/prepare_data.py on each first)")
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").unlink(missing_ok=True)  # a stale meta must not vouch for new files
    load = dict(hf_split=cfg.hf_split, hf_text_column=cfg.hf_text_column,
                hf_config=cfg.hf_config, data_dir=cfg.dir, progress=progress)
    rows = load_documents(cfg.source, **load)

    tok = _tokenizer_for(cfg, rows, progress)
    tok.save(out / "tokenizer.json")
    dtype = token_dtype(tok.vocab_size)
    tokenized = tokenize_rows(rows, tok, cfg.tokenize_batch, dtype, "tokenizing")
    total = _count(tokenized)
    train_path, val_path = out / "train.bin", out / "val.bin"
    if cfg.val_source:
        val_tok = tokenize_rows(load_documents(cfg.val_source, **load), tok, cfg.tokenize_batch,
                            dtype, "tokenizing val")
        n_train, n_val = total, _count(val_tok)
        streams = [(tokenized, [(train_path, n_train)]), (val_tok, [(val_path, n_val)])]
    else:
        n_train = int(total * (1 - cfg.val_fraction))  # nanoGPT: data[:int(n*0.9)] trains
        n_val = total - n_train
        streams = [(tokenized, [(train_path, n_train), (val_path, n_val)])]
    if n_train < 2 or (n_val < 2 and (cfg.val_source or cfg.val_fraction > 0)):
        raise DataError(f"data.source={cfg.source!r}: too small to split: {total} tokens give "
                        f"{n_train} train and {n_val} val tokens (each needs >= 2)")
    stats = _write_splits(streams, tok, dtype, progress)
    meta = {
        "format": PREPARED_FORMAT, "fingerprint": fp, "source": cfg.source, "val_source": cfg.val_source,
        "val_fraction": None if cfg.val_source else cfg.val_fraction,
        "vocab_size": tok.vocab_size, "eot_id": tok.eot_id, "eot_token": tok.eot_token,
        "dtype": dtype.name,
        "train_tokens": stats["train"]["tokens"], "val_tokens": stats["val"]["tokens"],
        "train_bytes": stats["train"]["bytes"], "val_bytes": stats["val"]["bytes"],
        "train_documents": stats["train"]["documents"], "val_documents": stats["val"]["documents"],
        "bytes_note": "UTF-8 bytes of the text each split's tokens stand for; end-of-text "
                      "tokens excluded. Bits per byte = nats / (ln 2 * bytes).",
        "config": asdict(cfg),
    }
    atomic_write(out / "meta.json", json.dumps(meta, indent=2))  # last: marks the dir complete
    return PreparedData(out, meta)


def prepare(cfg: DataConfig, accelerator=None, *, progress: bool = True) -> PreparedData:
    """Prepare (or reuse) the tokenizer and token files for ``cfg``.

    Under accelerate the main process prepares inside ``main_process_first()`` while the others
    wait, then they only reuse its output. An error in the main process is re-raised by every
    process after the barrier instead of leaving the others waiting forever.
    """
    if accelerator is None:
        return _prepare(cfg, progress)
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


# -- batches -----------------------------------------------------------------------------------


