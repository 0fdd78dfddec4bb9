"""The data section of a config: what to read and how to cut and tokenize it (``data.*``).

Its readers are ``prepare.py`` (one source, one store) and ``mixture.py`` (several); every
default says why in one line. Bad values fail at load time with one line naming the key.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from tinylm.data.corpus import DataError
from tinylm.data.units import SourceSpec

__all__ = ["DataConfig", "MixtureSource", "given_tokenizer"]


@dataclass
class MixtureSource:
    """One entry of ``data.mixture`` (tinylm/data/mixture.py): a source with its own store,
    ``weight`` its share of the training rows; ``name`` keys its logs (default: the file stem
    or last path part); the hf_* fields default to the data section's."""

    source: str
    weight: float
    name: Optional[str] = None
    hf_split: Optional[str] = None
    hf_config: Optional[str] = None
    hf_text_column: Optional[str] = None

    @property
    def label(self) -> str:
        parts = [p for p in Path(self.source.removeprefix("hf://")).parts
                 if not any(c in p for c in "*?[")]
        name = self.name or (Path(parts[-1]).stem if parts else "corpus")
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


@dataclass
class DataConfig:
    source: str = "python-docs"  # offline English prose on every Python; or a path, glob, hf://name
    hf_split: str = "train"  # the split nearly every dataset has (Hub and save_to_disk sources)
    hf_text_column: str = "text"  # the column name most text datasets use
    hf_config: Optional[str] = None  # Hub config name; None = the dataset's default
    val_source: Optional[str] = None  # None = validate on the stream's tail: no 2nd corpus needed
    val_fraction: float = 0.1  # nanoGPT's split: the last 10% of the token stream
    vocab_size: int = 8192  # ~4 bytes/token on English, and a head a CPU model can afford
    tokenizer: Optional[str] = None  # use this tokenizer (tokenizer.json, HF model dir, tinylm
    # checkpoint) instead of training a BPE: fine-tuning or distilling an imported model needs its ids
    dir: str = "data"  # root of prepared outputs (gitignored); one subdirectory per corpus+config
    tokenize_batch: int = 256  # rows per encode_batch call: enough for its threads (measured)
    workers: Optional[int] = None  # processes tokenizing units; None = one per core
    shard_bytes: int = 400_000_000  # input per unit/shard: ~100M tokens at ~4 bytes/token
    tokenizer_sample: int = 500_000_000  # characters the BPE trains on at most (nanochat: 2B)
    tokenizer_doc_chars: int = 10_000  # a sampled document is cut here: no one text dominates
    max_tokens: Optional[int] = None  # take only the first N tokens of the source (streams!)
    shuffle: str = "feistel"  # block order: O(1) memory; "randperm" = 0.2's (resumes its runs)
    # Several sources, each its own store, rows drawn by weight (mixture.py). When given,
    # data.source and data.val_source are ignored: each source validates on its own tail.
    mixture: list[MixtureSource] = field(default_factory=list)

    def __post_init__(self) -> None:  # OmegaConf.to_object runs this: bad values fail at load
        if self.shuffle not in ("feistel", "randperm"):
            raise DataError(f"data.shuffle={self.shuffle!r}: expected 'feistel' or 'randperm'")
        if not 0.0 <= self.val_fraction < 1.0:
            raise DataError(f"data.val_fraction={self.val_fraction}: expected 0 <= value < 1")
        if self.vocab_size < 257:
            raise DataError(f"data.vocab_size={self.vocab_size}: a byte-level BPE needs >= 257")
        for key in ("tokenize_batch", "shard_bytes", "tokenizer_sample", "tokenizer_doc_chars"):
            if getattr(self, key) < 1:
                raise DataError(f"data.{key}={getattr(self, key)}: expected >= 1")
        for key in ("workers", "max_tokens"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise DataError(f"data.{key}={getattr(self, key)}: expected >= 1 or null")
        self.mixture = [m if isinstance(m, MixtureSource) else MixtureSource(**m)
                        for m in self.mixture]
        names = [m.label for m in self.mixture]
        for m in self.mixture:
            if not (m.weight > 0 and math.isfinite(m.weight)):
                raise DataError(f"data.mixture: source {m.source!r} has weight {m.weight}: expected > 0")
            if names.count(m.label) > 1:
                raise DataError(f"data.mixture: two sources are named {m.label!r}; give each a name")

    def spec(self, source: Optional[str] = None) -> SourceSpec:
        return SourceSpec(source or self.source, self.hf_split, self.hf_text_column,
                          self.hf_config, self.dir)



def given_tokenizer(cfg: DataConfig) -> Optional[Path]:
    """The tokenizer.json ``data.tokenizer`` names (a file, or a directory holding one)."""
    if not cfg.tokenizer:
        return None
    path = Path(cfg.tokenizer)
    path = path / "tokenizer.json" if path.is_dir() else path
    if not path.is_file():
        raise DataError(f"data.tokenizer={cfg.tokenizer}: no tokenizer.json there")
    return path
