"""What a source becomes before any unit runs: its units, and the tokenizer they all use.

The units (units.py) depend only on the source and ``data.shard_bytes``, so any number of
workers, here or on a cluster, produces the same store. The tokenizer is ``data.tokenizer``
when given, else a byte-level BPE trained on the whole corpus when it fits in
``data.tokenizer_sample`` characters, or on a sample of that size spread over every unit
(nanochat trains on ~2B characters with each document capped at 10k), so memory and time
stay bounded for a corpus of any size.
"""

from __future__ import annotations

from typing import Iterator

from tinylm.data.config import DataConfig, given_tokenizer
from tinylm.data.corpus import DataError
from tinylm.data.tokenizer import Tokenizer
from tinylm.data.units import Unit, plan_units, unit_rows

__all__ = ["plan", "sample_texts", "train_tokenizer", "unit_bytes"]

MIN_UNIT_BYTES = 1 << 22  # units are never cut smaller than 4 MiB (unless shard_bytes is)
MIN_UNITS = 16  # ...but a corpus gets >= 16 units when it can: work for 16 workers


def unit_bytes(cfg: DataConfig, total: int) -> int:
    """Input bytes per unit: ``shard_bytes``, cut so a corpus yields MIN_UNITS units when it
    is big enough (so 16 workers have work), but never below MIN_UNIT_BYTES."""
    return min(cfg.shard_bytes, max(MIN_UNIT_BYTES, -(-total // MIN_UNITS)))


def plan(cfg: DataConfig) -> dict[str, list[Unit]]:
    """The units of the source (and of ``val_source``), in stream order."""
    out = {}
    for split, source in (("train", cfg.source), ("val", cfg.val_source)):
        if source:
            coarse = plan_units(cfg.spec(source), cfg.shard_bytes)
            total = sum(u.size for u in coarse)
            size = unit_bytes(cfg, total)
            out[split] = coarse if size == cfg.shard_bytes else plan_units(cfg.spec(source), size)
    return out


def sample_texts(cfg: DataConfig, units: list[Unit], counter: list[int]) -> Iterator[list[str]]:
    """Batches of text for the tokenizer: all of it when the corpus fits in
    ``tokenizer_sample`` characters (an upper bound from its bytes), else an even share of
    the sample from the start of each unit (units are spread over the whole corpus), each
    document (a table row, or a ~16 KB row of a text file) cut at ``tokenizer_doc_chars`` so
    no one long text dominates. ``counter[0]`` counts the characters given."""
    spec, total = cfg.spec(), sum(u.size for u in units)
    whole = 0 < total <= cfg.tokenizer_sample
    quota = cfg.tokenizer_sample if whole else cfg.tokenizer_sample // max(len(units), 1)
    for unit in units:
        taken, batch = 0, []
        for text, _ in unit_rows(unit, spec):
            text = text if whole else text[: cfg.tokenizer_doc_chars]
            if text:
                batch.append(text)
                taken += len(text)
            if len(batch) >= cfg.tokenize_batch:
                counter[0] += sum(map(len, batch))
                yield batch
                batch = []
            if not whole and taken >= quota:
                break
        if batch:
            counter[0] += sum(map(len, batch))
            yield batch


def train_tokenizer(cfg: DataConfig, units: list[Unit], progress: bool) -> Tokenizer:
    """``data.tokenizer`` if one is given (it must be a byte-level BPE), else a BPE trained on
    the sample; an empty corpus is an error either way."""
    chars = [0]
    if (given := given_tokenizer(cfg)) is not None:
        tok = Tokenizer.load(given)
        if not tok.is_byte_level:
            raise DataError(f"data.tokenizer={cfg.tokenizer}: not a byte-level BPE: its ids "
                            "don't map to exact bytes, so bits per byte would be wrong")
        for _ in sample_texts(cfg, units[:1], chars):  # is there any text at all?
            if chars[0]:
                break
    else:
        tok = Tokenizer.train(sample_texts(cfg, units, chars), cfg.vocab_size,
                              show_progress=progress)
    if chars[0] == 0:
        raise DataError(f"data.source={cfg.source!r}: the corpus is empty "
                        f"(0 characters of text in {len(units)} unit(s))")
    return tok
