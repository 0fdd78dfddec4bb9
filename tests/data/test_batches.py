"""TrainBatches (shuffled packed windows, disjoint across ranks, exact resume) and EvalBlocks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from tinylm.data.batches import SHUFFLES, EvalBlocks, TrainBatches, load_tokens
from tinylm.data.corpus import DataError
from tinylm.data.shuffle import FeistelPermutation
from tinylm.data.stream import TokenStream


def positions_file(tmp_path: Path, n: int, dtype=np.uint16) -> Path:
    """A token file whose token i is i: a batch shows exactly which positions it read."""
    path = tmp_path / f"pos-{n}-{np.dtype(dtype).name}.bin"
    np.arange(n, dtype=dtype).tofile(path)
    return path


def take(b: TrainBatches, k: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [next(b) for _ in range(k)]


def test_batches_shape_dtype_and_shift(tmp_path: Path) -> None:
    b = TrainBatches(positions_file(tmp_path, 5000), block_size=16, batch_size=4)
    assert isinstance(b.tokens, np.memmap)  # read on demand, never loaded whole
    x, y = next(b)
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
    assert x.is_contiguous() and y.is_contiguous()
    assert torch.equal(y, x + 1)  # token i is i: y is x shifted by one


def test_one_epoch_covers_every_token_once_with_disjoint_ranks(tmp_path: Path) -> None:
    n, T, B, W = 4000, 16, 3, 3
    path = positions_file(tmp_path, n)
    ranks = [TrainBatches(path, T, B, rank=r, world_size=W, seed=5) for r in range(W)]
    steps = ranks[0].steps_per_epoch()
    assert steps == (n - 1 - ranks[0]._order()[0]) // T // (B * W)
    targets = torch.cat([torch.cat([y for _, y in take(b, steps)]).flatten() for b in ranks])
    assert len(set(targets.tolist())) == len(targets)  # no target twice, no block on two ranks
    assert len(targets) > n - (B * W + 2) * T  # and all but the edges are covered
    assert all(b.epoch == 0 for b in ranks)
    next(ranks[0])
    assert ranks[0].epoch == 1 and ranks[0].step == 1


def test_order_depends_on_seed_and_epoch_only(tmp_path: Path) -> None:
    path = positions_file(tmp_path, 3000)
    a, b = TrainBatches(path, 8, 4, seed=1), TrainBatches(path, 8, 4, seed=1)
    first = take(a, 2 * a.steps_per_epoch())
    assert all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(first, take(b, len(first))))
    epoch0, epoch1 = first[: a.steps_per_epoch()], first[a.steps_per_epoch():]
    assert not torch.equal(epoch0[0][0], epoch1[0][0])
    assert not torch.equal(next(TrainBatches(path, 8, 4, seed=2))[0], first[0][0])


def test_resume_yields_exactly_the_uninterrupted_batches(tmp_path: Path) -> None:
    path = positions_file(tmp_path, 2000)
    for rank in (0, 1):
        ref = take(TrainBatches(path, 16, 5, rank=rank, world_size=2, seed=3), 20)  # > 3 epochs
        for cut in (0, 5, 11, 12, 19):
            b = TrainBatches(path, 16, 5, rank=rank, world_size=2, seed=3)
            take(b, cut)
            state = json.loads(json.dumps(b.state_dict()))  # as a checkpoint stores it
            resumed = TrainBatches(path, 16, 5, rank=rank, world_size=2, seed=999)
            resumed.load_state_dict(state)
            for (x, y), (rx, ry) in zip(ref[cut:], take(resumed, 20 - cut)):
                assert torch.equal(x, rx) and torch.equal(y, ry)


def test_resume_on_other_world_size_skips_nothing_twice(tmp_path: Path) -> None:
    path = positions_file(tmp_path, 6000)
    old = TrainBatches(path, 8, 4, world_size=1, seed=0)
    seen = torch.cat([x for x, _ in take(old, 10)]).flatten().tolist()
    state = old.state_dict()
    for r in range(2):
        new = TrainBatches(path, 8, 2, rank=r, world_size=2, seed=0)
        new.load_state_dict(state)
        assert new.step == 10
        seen += torch.cat([x for x, _ in take(new, 5)]).flatten().tolist()
    assert len(seen) == len(set(seen))
    with pytest.raises(DataError, match="block_size=8, now 16"):
        TrainBatches(path, 16, 2).load_state_dict(state)


def test_uint32_tokens_and_too_small_split(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    (np.arange(500, dtype=np.uint32) + 70_000).tofile(big)
    x, y = next(TrainBatches(big, 8, 2, dtype=np.uint32))
    assert int(x.min()) >= 70_000 and torch.equal(y, x + 1)
    with pytest.raises(DataError, match=r"100 tokens is too small for one batch: 2 process\(es\) "
                                        r"x 4 blocks of 16 tokens need 144"):
        TrainBatches(positions_file(tmp_path, 100), 16, 4, rank=1, world_size=2)
    with pytest.raises(DataError, match="not a whole number of uint32"):
        load_tokens(positions_file(tmp_path, 99), np.uint32)


@pytest.mark.parametrize("n", [33, 40, 41, 100])
def test_eval_blocks_predict_every_token_after_the_first_once(tmp_path: Path, n: int) -> None:
    blocks = EvalBlocks(positions_file(tmp_path, n), block_size=8)
    assert len(blocks) == -(-(n - 1) // 8)
    targets = []
    for i in range(len(blocks)):
        x, y = blocks[i]
        assert x.shape == y.shape == (8,) and x.dtype == y.dtype == torch.int64
        k = int((y != -100).sum())
        assert torch.equal(x[:k], torch.arange(i * 8, i * 8 + k))
        targets += y[y != -100].tolist()
    assert targets == list(range(1, n))
    x, y = next(iter(DataLoader(blocks, batch_size=len(blocks))))
    assert x.shape == (len(blocks), 8) and int((y != -100).sum()) == n - 1
    with pytest.raises(IndexError):
        blocks[len(blocks)]


def test_eval_blocks_too_small_split(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="8 tokens is too small for one evaluation block of 8"):
        EvalBlocks(positions_file(tmp_path, 8), block_size=8)


# -- sharded stores and the shuffle ------------------------------------------------------------

def sharded(tmp_path: Path, n: int, cuts: list[int]) -> TokenStream:
    """Token i is i, spread over shard files cut at ``cuts``; the last shard has 7 extra tokens
    past its range (as a val tail would), which the stream must not read."""
    parts, edges = [], [0, *cuts, n]
    for k, (a, b) in enumerate(zip(edges, edges[1:])):
        path = tmp_path / f"train-{k:05d}.bin"
        np.arange(a, b + (7 if k == len(edges) - 2 else 0), dtype=np.uint16).tofile(path)
        parts.append((path, 0, b - a))
    return TokenStream(parts, np.uint16)


@pytest.mark.parametrize("shuffle", SHUFFLES)
def test_a_sharded_stream_batches_exactly_like_one_flat_file(tmp_path: Path, shuffle: str) -> None:
    n = 3000
    stream = sharded(tmp_path, n, [17, 500, 501, 2048])
    assert len(stream) == n and np.array_equal(stream[10:600], np.arange(10, 600))
    flat = TrainBatches(positions_file(tmp_path, n), 16, 4, seed=3, shuffle=shuffle)
    shards = TrainBatches(stream, 16, 4, seed=3, shuffle=shuffle)
    for (x1, y1), (x2, y2) in zip(take(flat, 2 * flat.steps_per_epoch()),
                                  take(shards, 2 * flat.steps_per_epoch())):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    blocks = EvalBlocks(stream, 16)
    assert torch.equal(torch.cat([blocks[i][0] for i in range(len(blocks))])[: n - 1],
                       torch.arange(n - 1))


def test_resume_through_a_shard_boundary_from_one_process_to_two(tmp_path: Path) -> None:
    """Same global batch (1 x 8 = 2 x 4): after a resume the two ranks' rows, in rank order,
    are the rows the single process would have read, across shard boundaries and an epoch."""
    stream = sharded(tmp_path, 4000, [333, 1000, 2500])
    one = TrainBatches(stream, 16, 8, seed=9)
    whole = take(one, one.steps_per_epoch() + 6)
    first = TrainBatches(stream, 16, 8, seed=9)
    take(first, 5)
    state = json.loads(json.dumps(first.state_dict()))  # what a checkpoint holds
    ranks = [TrainBatches(stream, 16, 4, rank=r, world_size=2, seed=0) for r in range(2)]
    for b in ranks:
        b.load_state_dict(state)
    for step in range(5, len(whole)):
        rows = torch.cat([next(b)[0] for b in ranks])
        assert torch.equal(rows, whole[step][0]), step
    assert ranks[0].epoch == 1


def test_the_order_is_a_permutation_without_materialising_it(tmp_path: Path) -> None:
    """Feistel: the plan holds a bijection, not an array of every block (randperm does)."""
    b = TrainBatches(positions_file(tmp_path, 60_000), 4, 2, seed=1)
    _, n_blocks, order = b._order()
    assert isinstance(order, FeistelPermutation) and n_blocks > 14_000
    assert sorted(order(np.arange(n_blocks)).tolist()) == list(range(n_blocks))
    legacy = TrainBatches(positions_file(tmp_path, 60_000), 4, 2, seed=1, shuffle="randperm")
    assert not isinstance(legacy._order()[2], FeistelPermutation)


def test_a_position_saved_under_one_shuffle_is_refused_by_the_other(tmp_path: Path) -> None:
    path = positions_file(tmp_path, 3000)
    old = TrainBatches(path, 8, 4, shuffle="randperm")
    take(old, 3)
    state = old.state_dict()
    state.pop("shuffle")  # tinylm 0.2 saved none: its order was randperm
    with pytest.raises(DataError, match=r"shuffle=randperm, now feistel: .* \(set data.shuffle=randperm\)$"):
        TrainBatches(path, 8, 4).load_state_dict(state)
    again = TrainBatches(path, 8, 4, shuffle="randperm")
    again.load_state_dict(state)
    assert torch.equal(next(again)[0], next(old)[0])
