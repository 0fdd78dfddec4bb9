"""Batches cut from flat token files: shuffled packed training windows, disjoint across
processes and exactly resumable (:class:`TrainBatches`), and the validation split in
non-overlapping blocks (:class:`EvalBlocks`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from tinylm.data.corpus import DataError
from tinylm.data.shuffle import FeistelPermutation
from tinylm.data.stream import TokenStream

Tokens = Union[str, Path, TokenStream, np.ndarray]  # a token file, or a split of a store
SHUFFLES = ("feistel", "randperm")


def _tokens(tokens: Tokens, dtype) -> TokenStream | np.ndarray:
    return load_tokens(tokens, dtype) if isinstance(tokens, (str, Path)) else tokens


def load_tokens(path: str | Path, dtype=np.uint16) -> np.ndarray:
    """A read-only memory map of a token file: nothing is read until it is indexed."""
    path, dtype = Path(path), np.dtype(dtype)
    if not path.is_file():
        raise DataError(f"{path}: token file not found (run scripts/prepare_data.py)")
    size = path.stat().st_size
    if size % dtype.itemsize:
        raise DataError(f"{path}: {size} bytes is not a whole number of {dtype.name} ids")
    return np.memmap(path, dtype=dtype, mode="r") if size else np.zeros(0, dtype=dtype)


class TrainBatches:
    """Infinite ``(x, y)`` int64 batches of shape (batch_size, block_size): shuffled packed
    blocks, disjoint across processes, resumable exactly.

    Each epoch draws an offset in [0, block_size) and cuts the stream from there into
    consecutive non-overlapping input blocks of ``block_size`` tokens; block k is read as a
    window of block_size + 1 tokens, x = window[:-1], y = window[1:] (the next block's first
    token is this block's last target). The blocks are permuted by a bijection seeded with
    (seed, epoch), identically on every process: a Feistel permutation evaluated per index
    (``shuffle="feistel"``, O(1) memory at any corpus size), or tinylm 0.2's materialised
    ``torch.randperm`` (``"randperm"``, which its runs resume with); step s uses permuted blocks
    [s*B*W, (s+1)*B*W) and process r takes the r-th slice of B. Why:
      * every token is a target at most once per epoch, and all but < (B*W+2)*T of them (the
        offset, the tail, the blocks left over after the last whole step) exactly once; random
        windows would repeat some tokens and miss others;
      * processes never see the same block in an epoch, with no communication;
      * the position is just (epoch, step): resuming replays nothing and skips nothing, and
        every process gets the same number of steps per epoch (DDP never waits on a straggler);
      * the offset moves the block boundaries between epochs, so no token is always first.
    Reads go to memory maps (of one file or of a store's shards, across shard boundaries);
    only the B windows of a step are ever in memory.
    """

    def __init__(self, tokens: Tokens, block_size: int, batch_size: int, rank: int = 0,
                 world_size: int = 1, seed: int = 0, dtype=np.uint16,
                 shuffle: str = "feistel") -> None:
        if not 0 <= rank < world_size:
            raise DataError(f"rank={rank} is outside world_size={world_size}")
        if shuffle not in SHUFFLES:
            raise DataError(f"data.shuffle={shuffle!r}: expected one of {SHUFFLES}")
        self.path, self.T, self.B = tokens, block_size, batch_size
        self.rank, self.world, self.seed, self.shuffle = rank, world_size, seed, shuffle
        self.tokens = _tokens(tokens, dtype)
        n, need = len(self.tokens), block_size * (batch_size * world_size + 1)
        if n < need:
            raise DataError(
                f"{self.path}: {n} tokens is too small for one batch: {world_size} process(es) x "
                f"{batch_size} blocks of {block_size} tokens need {need} (with room for the "
                "random offset); use a bigger corpus or a smaller block_size / batch_size")
        self.epoch, self.step = 0, 0
        self._plan: Optional[tuple[int, int, int, Callable]] = None  # epoch, offset, blocks, order

    def _order(self) -> tuple[int, int, Callable[[np.ndarray], np.ndarray]]:
        """(offset, blocks, order) of this epoch: ``order(positions)`` -> block indices."""
        if self._plan is None or self._plan[0] != self.epoch:
            seq = np.random.SeedSequence([abs(int(self.seed)), self.epoch])
            g = torch.Generator().manual_seed(int(seq.generate_state(1, np.uint64)[0] >> 1))
            offset = int(torch.randint(0, self.T, (1,), generator=g))
            n_blocks = (len(self.tokens) - 1 - offset) // self.T
            if self.shuffle == "randperm":
                perm = torch.randperm(n_blocks, generator=g).numpy()
                order = perm.__getitem__
            else:
                order = FeistelPermutation(n_blocks, int(torch.randint(0, 2**62, (1,), generator=g)))
            self._plan = (self.epoch, offset, n_blocks, order)
        return self._plan[1], self._plan[2], self._plan[3]

    def steps_per_epoch(self) -> int:
        return self._order()[1] // (self.B * self.world)

    def __iter__(self) -> "TrainBatches":
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.step >= self.steps_per_epoch():
            self.epoch, self.step = self.epoch + 1, 0
        offset, _, order = self._order()
        first = (self.step * self.world + self.rank) * self.B
        starts = offset + order(np.arange(first, first + self.B)) * self.T
        rows = np.stack([self.tokens[s:s + self.T + 1] for s in starts]).astype(np.int64)
        self.step += 1
        return torch.from_numpy(rows[:, :-1].copy()), torch.from_numpy(rows[:, 1:].copy())

    def state_dict(self) -> dict:
        """The same on every process (no rank in it): save it from the main process only."""
        return {"epoch": self.epoch, "step": self.step, "seed": self.seed, "shuffle": self.shuffle,
                "blocks_done": self.step * self.B * self.world, "block_size": self.T,
                "batch_size": self.B, "world_size": self.world, "tokens": len(self.tokens)}

    def load_state_dict(self, state: dict, same_data: bool = True) -> None:
        """Continue where ``state`` left off. With the same batch size and process count this
        is exact; with others, the epoch's order goes on from the first unread block (rounded
        up to a whole step). The block size and token file must match: they define the order.
        ``same_data=False`` (``checkpoint.allow_data_change``): the tokens may differ; the run
        keeps its epoch and step, in the new data's order (nothing can be exact then)."""
        checks = [("block_size", self.T), ("shuffle", self.shuffle)]
        if same_data:
            checks.append(("tokens", len(self.tokens)))
        for key, mine in checks:
            saved = state.get(key, "randperm")  # 0.2 saved no shuffle: it was randperm
            if saved != mine:
                hint = f" (set data.shuffle={saved})" if key == "shuffle" else ""
                raise DataError(f"data position was saved with {key}={saved}, now {mine}: "
                                f"the block order differs, resume is impossible{hint}")
        self.seed, self.epoch = state["seed"], state["epoch"]
        per_step = self.B * self.world
        self.step = -(-state["blocks_done"] // per_step)  # ceil: never repeat a block
        if self.step >= self.steps_per_epoch() and not same_data:
            self.epoch, self.step = self.epoch + 1, 0


class EvalBlocks(Dataset):
    """Sequential non-overlapping blocks covering a split exactly once (map-style).

    Item i is (x, y) with x = tokens[i*T : i*T+T] and y = tokens[i*T+1 : i*T+T+1]; the last
    block is padded (x with 0, y with -100, cross_entropy's ignore_index), so every token after
    the first is predicted exactly once: len(split) - 1 targets in all. Sharding across
    processes is the DataLoader's and accelerate's job.
    """

    def __init__(self, tokens: Tokens, block_size: int, dtype=np.uint16) -> None:
        self.tokens, self.T, path = _tokens(tokens, dtype), block_size, tokens
        if len(self.tokens) < block_size + 1:
            raise DataError(f"{path}: {len(self.tokens)} tokens is too small for one evaluation "
                            f"block of {block_size} (+1 target); use a bigger val split or a "
                            "smaller block_size")

    def __len__(self) -> int:
        return -(-(len(self.tokens) - 1) // self.T)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        chunk = torch.from_numpy(self.tokens[i * self.T: i * self.T + self.T + 1].astype(np.int64))
        x = torch.zeros(self.T, dtype=torch.long)
        y = torch.full((self.T,), -100, dtype=torch.long)
        x[: len(chunk) - 1], y[: len(chunk) - 1] = chunk[:-1], chunk[1:]
        return x, y
