"""Batches cut from flat token files: shuffled packed training windows, disjoint across
processes and exactly resumable (:class:`TrainBatches`), and the validation split in
non-overlapping blocks (:class:`EvalBlocks`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from tinylm.data.corpus import DataError


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
    token is this block's last target). The blocks are permuted by a generator seeded with
    (seed, epoch), identically on every process; step s uses permuted blocks
    [s*B*W, (s+1)*B*W) and process r takes the r-th slice of B. Why:
      * every token is a target at most once per epoch, and all but < (B*W+2)*T of them (the
        offset, the tail, the blocks left over after the last whole step) exactly once; random
        windows would repeat some tokens and miss others;
      * processes never see the same block in an epoch, with no communication;
      * the position is just (epoch, step): resuming replays nothing and skips nothing, and
        every process gets the same number of steps per epoch (DDP never waits on a straggler);
      * the offset moves the block boundaries between epochs, so no token is always first.
    Reads go to a memory map; only the B windows of a step are ever in memory.
    """

    def __init__(self, path: str | Path, block_size: int, batch_size: int, rank: int = 0,
                 world_size: int = 1, seed: int = 0, dtype=np.uint16) -> None:
        if not 0 <= rank < world_size:
            raise DataError(f"rank={rank} is outside world_size={world_size}")
        self.path, self.T, self.B = Path(path), block_size, batch_size
        self.rank, self.world, self.seed = rank, world_size, seed
        self.tokens = load_tokens(path, dtype)
        n, need = len(self.tokens), block_size * (batch_size * world_size + 1)
        if n < need:
            raise DataError(
                f"{self.path}: {n} tokens is too small for one batch: {world_size} process(es) x "
                f"{batch_size} blocks of {block_size} tokens need {need} (with room for the "
                "random offset); use a bigger corpus or a smaller block_size / batch_size")
        self.epoch, self.step = 0, 0
        self._plan: Optional[tuple[int, int, torch.Tensor]] = None  # (epoch, offset, order)

    def _order(self) -> tuple[int, torch.Tensor]:
        if self._plan is None or self._plan[0] != self.epoch:
            seq = np.random.SeedSequence([abs(int(self.seed)), self.epoch])
            g = torch.Generator().manual_seed(int(seq.generate_state(1, np.uint64)[0] >> 1))
            offset = int(torch.randint(0, self.T, (1,), generator=g))
            n_blocks = (len(self.tokens) - 1 - offset) // self.T
            self._plan = (self.epoch, offset, torch.randperm(n_blocks, generator=g))
        return self._plan[1], self._plan[2]

    def steps_per_epoch(self) -> int:
        return len(self._order()[1]) // (self.B * self.world)

    def __iter__(self) -> "TrainBatches":
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.step >= self.steps_per_epoch():
            self.epoch, self.step = self.epoch + 1, 0
        offset, order = self._order()
        first = (self.step * self.world + self.rank) * self.B
        starts = offset + order[first:first + self.B].numpy() * self.T
        rows = np.stack([self.tokens[s:s + self.T + 1] for s in starts]).astype(np.int64)
        self.step += 1
        return torch.from_numpy(rows[:, :-1].copy()), torch.from_numpy(rows[:, 1:].copy())

    def state_dict(self) -> dict:
        """The same on every process (no rank in it): save it from the main process only."""
        return {"epoch": self.epoch, "step": self.step, "seed": self.seed,
                "blocks_done": self.step * self.B * self.world, "block_size": self.T,
                "batch_size": self.B, "world_size": self.world, "tokens": len(self.tokens)}

    def load_state_dict(self, state: dict) -> None:
        """Continue where ``state`` left off. With the same batch size and process count this
        is exact; with others, the epoch's order goes on from the first unread block (rounded
        up to a whole step). The block size and token file must match: they define the order."""
        for key, mine in (("block_size", self.T), ("tokens", len(self.tokens))):
            if state[key] != mine:
                raise DataError(f"data position was saved with {key}={state[key]}, now {mine}: "
                                "the block order differs, resume is impossible")
        self.seed, self.epoch = state["seed"], state["epoch"]
        per_step = self.B * self.world
        self.step = -(-state["blocks_done"] // per_step)  # ceil: never repeat a block


class EvalBlocks(Dataset):
    """Sequential non-overlapping blocks covering a split exactly once (map-style).

    Item i is (x, y) with x = tokens[i*T : i*T+T] and y = tokens[i*T+1 : i*T+T+1]; the last
    block is padded (x with 0, y with -100, cross_entropy's ignore_index), so every token after
    the first is predicted exactly once: len(split) - 1 targets in all. Sharding across
    processes is the DataLoader's and accelerate's job.
    """

    def __init__(self, path: str | Path, block_size: int, dtype=np.uint16) -> None:
        self.tokens, self.T = load_tokens(path, dtype), block_size
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
