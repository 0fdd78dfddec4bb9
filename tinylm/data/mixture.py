"""Data mixtures: ``data.mixture: [{source: ..., weight: 0.7}, ...]``, each source its own store.

:func:`prepare_mixture` gives every source one shared tokenizer (``data.tokenizer``, else a BPE
trained on a sample drawn from the sources in proportion to their weights: each gets
``weight / sum(weights) * data.tokenizer_sample`` characters of ``prepare``'s sampling), kept
under ``<data.dir>/mixture-<key>/tokenizer.json``, then prepares each source as an ordinary
store (prepare.py) with that tokenizer; a second call reuses all of it. ``data.source`` and
``data.val_source`` are ignored: each source validates on the tail of its own stream.

:class:`MixtureBatches` draws the rows. Global row g (draw d of B rows on each of W processes
covers rows [d*B*W, (d+1)*B*W), process r takes the r-th B of them) comes from source s with
probability weight_s / sum(weights), decided by a counter-based hash of (seed, g): no RNG state,
and the assignment does not depend on the process count or on how rows are grouped into draws.
Row g is the k-th row of its source, k = the number of earlier rows assigned to it (every
process computes the whole draw's assignment, and the counts before it are the state). The
k-th block of source s is block ``k % n_s`` of epoch ``k // n_s`` (n_s = (len_s - T) // T
blocks fit at any offset): a Feistel permutation and a random offset in [0, T) per (source,
epoch), as :class:`~tinylm.data.batches.TrainBatches` does for one source. So resume is
exact, and a resume with another process count (the same rows per optimizer step) reads the
same rows.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import tokenizers
import torch

from tinylm.data.batches import Tokens, load_tokens
from tinylm.data.corpus import DataError, describe
from tinylm.data.config import DataConfig, MixtureSource
from tinylm.data.plan import plan, sample_texts
from tinylm.data.prepare import PREPARED_FORMAT, PreparedData, prepare
from tinylm.data.shuffle import _GOLDEN, FeistelPermutation, _mix64
from tinylm.data.tokenizer import Tokenizer

__all__ = ["MixtureBatches", "PreparedMixture", "prepare_mixture"]

_SUMMED = ("train_tokens", "val_tokens", "train_bytes", "val_bytes")


def part_config(cfg: DataConfig, m: MixtureSource, tokenizer: Optional[str]) -> DataConfig:
    """The config that prepares source ``m`` alone, with the mixture's tokenizer."""
    return replace(cfg, source=m.source, hf_split=m.hf_split or cfg.hf_split,
                   hf_config=m.hf_config if m.hf_config is not None else cfg.hf_config,
                   hf_text_column=m.hf_text_column or cfg.hf_text_column, val_source=None,
                   tokenizer=tokenizer, mixture=[])


def mixture_dir(cfg: DataConfig) -> Path:
    """``<dir>/mixture-<key>``: the key covers what the shared tokenizer is trained from."""
    parts = []
    for m in cfg.mixture:
        p = part_config(cfg, m, None)
        parts.append({"source": describe(p.source), "weight": m.weight, "split": p.hf_split,
                      "config": p.hf_config, "column": p.hf_text_column})
    info = {"format": PREPARED_FORMAT, "tokenizers": tokenizers.__version__, "parts": parts,
            **{k: getattr(cfg, k) for k in ("vocab_size", "tokenizer_sample",
                                            "tokenizer_doc_chars", "shard_bytes")}}
    key = hashlib.sha256(json.dumps(info, sort_keys=True, default=str).encode()).hexdigest()
    return Path(cfg.dir) / f"mixture-{key[:16]}"


def _train_tokenizer(cfg: DataConfig, path: Path, progress: bool) -> None:
    """A BPE on each source's share of ``data.tokenizer_sample`` (by weight), saved at ``path``."""
    total = sum(m.weight for m in cfg.mixture)
    counters, streams = [], []
    for m in cfg.mixture:
        sub = replace(part_config(cfg, m, None),
                      tokenizer_sample=max(1, int(cfg.tokenizer_sample * m.weight / total)))
        counters.append([0])
        streams.append(sample_texts(sub, plan(sub)["train"], counters[-1]))
    tok = Tokenizer.train(itertools.chain(*streams), cfg.vocab_size, show_progress=progress)
    for m, chars in zip(cfg.mixture, counters):
        if chars[0] == 0:
            raise DataError(f"data.mixture: source {m.source!r} is empty (0 characters of text)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(path)


def _shared_tokenizer(cfg: DataConfig, accelerator, progress: bool) -> str:
    """The tokenizer every source is prepared with (trained by the main process only)."""
    if cfg.tokenizer:
        return cfg.tokenizer
    path = mixture_dir(cfg) / "tokenizer.json"
    if accelerator is None:
        if not path.is_file():
            _train_tokenizer(cfg, path, progress)
        return str(path)
    error = None
    with accelerator.main_process_first():
        try:
            if accelerator.is_main_process and not path.is_file():
                _train_tokenizer(cfg, path, progress)
            elif not path.is_file():
                raise DataError(f"{path}: no mixture tokenizer after the main process ran (put "
                                "data.dir on a shared filesystem)")
        except Exception as e:  # noqa: BLE001 - re-raised below, after the barrier
            error = e
    if error is not None:
        raise error
    return str(path)


@dataclass
class PreparedMixture:
    """The prepared stores of a mixture, in ``data.mixture`` order: ``(name, weight, data)``."""

    parts: list[tuple[str, float, PreparedData]]
    tokenizer_path: Path
    meta: dict = field(init=False)

    def __post_init__(self) -> None:
        metas = [d.meta for _, _, d in self.parts]
        if len({(m["vocab_size"], m["dtype"]) for m in metas}) != 1:
            raise DataError("data.mixture: the sources' stores have different vocabularies")
        self.meta = {"vocab_size": metas[0]["vocab_size"], "dtype": metas[0]["dtype"],
                     "eot_id": metas[0].get("eot_id"), "fingerprint": self.fingerprint,
                     **{k: sum(m[k] for m in metas) for k in _SUMMED},
                     "mixture": [{"name": n, "weight": w, "dir": str(d.dir),
                                  "fingerprint": d.fingerprint} for n, w, d in self.parts]}

    @property
    def dir(self) -> Path:
        """The first source's store: what a checkpoint names for its validation split."""
        return self.parts[0][2].dir

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.meta["dtype"])

    @property
    def fingerprint(self) -> str:
        """A hash of the parts' fingerprints and weights."""
        ident = [[d.fingerprint, w] for _, w, d in self.parts]
        return hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:16]

    def tokenizer(self) -> Tokenizer:
        return Tokenizer.load(self.tokenizer_path)


def prepare_mixture(cfg: DataConfig, accelerator=None, progress: bool = True) -> PreparedMixture:
    """Prepare (or reuse) the shared tokenizer and one store per source of ``cfg.mixture``."""
    if not cfg.mixture:
        raise DataError("data.mixture is empty: nothing to mix (use tinylm.data.prepare.prepare)")
    tokenizer = _shared_tokenizer(cfg, accelerator, progress)
    parts = [(m.label, float(m.weight),
              prepare(part_config(cfg, m, tokenizer), accelerator, progress=progress))
             for m in cfg.mixture]
    return PreparedMixture(parts, Path(parts[0][2].tokenizer_path))


class MixtureBatches:
    """Infinite ``(x, y)`` int64 batches of shape (batch_size, block_size), each row from one
    source of the mixture, drawn by weight (see the module docstring). The interface of
    :class:`~tinylm.data.batches.TrainBatches`: ``state_dict`` is the same on every process."""

    def __init__(self, parts: Sequence[tuple[str, float, Tokens]], block_size: int,
                 batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 dtype=np.uint16) -> None:
        if not 0 <= rank < world_size:
            raise DataError(f"rank={rank} is outside world_size={world_size}")
        if not parts:
            raise DataError("a mixture needs at least one source")
        self.names = [str(n) for n, _, _ in parts]
        self.weights = [float(w) for _, w, _ in parts]
        if len(set(self.names)) < len(self.names) or min(self.weights) <= 0:
            raise DataError(f"mixture sources {self.names} with weights {self.weights}: "
                            "names must be unique and weights > 0")
        self.tokens = [load_tokens(t, dtype) if isinstance(t, (str, Path)) else t
                       for _, _, t in parts]
        self.T, self.B, self.rank, self.world = block_size, batch_size, rank, world_size
        self.blocks = [(len(t) - block_size) // block_size for t in self.tokens]
        for name, t, n in zip(self.names, self.tokens, self.blocks):
            if n < 1:
                raise DataError(f"mixture source {name!r}: {len(t)} tokens is too small for one "
                                f"block of {block_size} (+ the random offset); needs "
                                f"{2 * block_size}")
        cum = np.cumsum(self.weights) / sum(self.weights)  # row -> source: hash below a threshold
        self._thresholds = np.array([int(c * 2**53) for c in cum[:-1]], dtype=np.uint64)
        self.rows_done, self.counts = 0, np.zeros(len(parts), dtype=np.int64)
        self._plans: dict[tuple[int, int], tuple[int, FeistelPermutation]] = {}
        self._set_seed(seed)

    def _set_seed(self, seed: int) -> None:
        self.seed, self._plans = int(seed), {}
        seq = np.random.SeedSequence([abs(self.seed), int(self.seed < 0), 0x6D6978])  # "mix"
        self._key = seq.generate_state(1, np.uint64)[0]

    def sources_of(self, rows: np.ndarray) -> np.ndarray:
        """The source index of each global row: splitmix64 of (seed, row), its top 53 bits
        against the cumulative weights (integer arithmetic: the same on every platform)."""
        with np.errstate(over="ignore"):
            h = _mix64(self._key + (np.asarray(rows, dtype=np.uint64) + np.uint64(1)) * _GOLDEN)
        return np.searchsorted(self._thresholds, h >> np.uint64(11), side="right")

    def _plan(self, s: int, epoch: int) -> tuple[int, FeistelPermutation]:
        """(offset, order) of source ``s``'s ``epoch``: from (seed, s, epoch) alone."""
        if (s, epoch) not in self._plans:
            if len(self._plans) > 4 * len(self.names):
                self._plans.clear()
            seq = np.random.SeedSequence([abs(self.seed), int(self.seed < 0), s, epoch])
            a, b = (int(v) for v in seq.generate_state(2, np.uint64))
            self._plans[(s, epoch)] = (a % self.T, FeistelPermutation(self.blocks[s], b >> 2))
        return self._plans[(s, epoch)]

    def _starts(self, s: int, k: np.ndarray) -> np.ndarray:
        """Token offsets of the k-th blocks of source ``s``."""
        out = np.empty(len(k), dtype=np.int64)
        epochs, idx = k // self.blocks[s], k % self.blocks[s]
        for e in np.unique(epochs):
            here = epochs == e
            offset, order = self._plan(s, int(e))
            out[here] = offset + order(idx[here]) * self.T
        return out

    def __iter__(self) -> "MixtureBatches":
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        G = self.B * self.world
        drawn = self.sources_of(self.rows_done + np.arange(G))  # the whole draw, every process
        k = np.empty(G, dtype=np.int64)  # each row's index within its source
        for s in range(len(self.names)):
            here = drawn == s
            k[here] = self.counts[s] + np.arange(int(here.sum()))
        mine = slice(self.rank * self.B, (self.rank + 1) * self.B)
        src, k = drawn[mine], k[mine]
        rows = np.empty((self.B, self.T + 1), dtype=np.int64)
        for s in np.unique(src):
            here = np.flatnonzero(src == s)
            for j, start in zip(here, self._starts(int(s), k[here])):
                rows[j] = self.tokens[s][start:start + self.T + 1]
        self.counts += np.bincount(drawn, minlength=len(self.names))
        self.rows_done += G
        return torch.from_numpy(rows[:, :-1].copy()), torch.from_numpy(rows[:, 1:].copy())

    def tokens_seen(self) -> dict[str, int]:
        """Input tokens drawn from each source so far, all processes together."""
        return {n: int(c) * self.T for n, c in zip(self.names, self.counts)}

    def state_dict(self) -> dict:
        """The same on every process (no rank in it): save it from the main process only."""
        G = self.B * self.world
        return {"mixture": [{"name": n, "weight": w, "tokens": len(t)} for n, w, t in
                            zip(self.names, self.weights, self.tokens)],
                "rows_done": self.rows_done, "counts": self.counts.tolist(),
                "step": self.rows_done // G, "seed": self.seed, "block_size": self.T,
                "batch_size": self.B, "world_size": self.world, "global_batch": G,
                "tokens_by_source": self.tokens_seen()}

    def load_state_dict(self, state: dict, same_data: bool = True) -> None:
        """Continue exactly where ``state`` left off. Refused (one line): a position saved
        without a mixture, another block size or other sources/weights (they define the rows),
        other source lengths unless ``same_data`` is False (a data change allowed), and a
        position that is not a whole number of this run's rows per draw (batch_size x
        processes). Another process count with the same rows per optimizer step is fine."""
        if "mixture" not in state:
            raise DataError("data position was saved without data.mixture (one source): "
                            "a mixture cannot resume it")
        saved = [(m["name"], m["weight"]) for m in state["mixture"]]
        mine = list(zip(self.names, self.weights))
        for what, was, now in (("block_size", state.get("block_size"), self.T),
                               ("mixture", saved, mine)):
            if was != now:
                raise DataError(f"data position was saved with {what}={was}, now {now}: the "
                                "rows differ, resume is impossible")
        lengths = [m["tokens"] for m in state["mixture"]]
        if same_data and lengths != [len(t) for t in self.tokens]:
            raise DataError(f"data position was saved with source lengths {lengths}, now "
                            f"{[len(t) for t in self.tokens]}: the data changed")
        G = self.B * self.world
        if state["rows_done"] % G:
            raise DataError(f"data position was saved after {state['rows_done']} rows, not a "
                            f"whole number of this run's {G} rows per draw (batch_size x "
                            "processes): resume with the same global batch")
        self._set_seed(state["seed"])
        self.rows_done = int(state["rows_done"])
        self.counts = np.array(state["counts"], dtype=np.int64)
