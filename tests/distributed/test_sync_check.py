"""The sync check's digests, in one process: exact (any changed byte changes them), the same
for the same bytes, and the accelerator path's fold exact in int64 (no overflow at the
largest words and weights). The cross-process checks are in test_trainer_dist.py and
test_parallel.py (real 2-rank launches)."""

from __future__ import annotations

import torch

from tinylm.distributed.sync_check import BLOCK, CHUNK, fold, tensor_digest


def _flip(t: torch.Tensor, byte: int, bit: int) -> torch.Tensor:
    out = t.clone()
    out.view(torch.uint8).view(-1)[byte] ^= 1 << bit
    return out


def _raw(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.uint8).reshape(-1)


def test_digest_is_a_function_of_bytes_dtype_and_shape():
    x = torch.randn(64, 32)
    assert tensor_digest(x) == tensor_digest(x.clone()) == tensor_digest(x.t().contiguous().t())
    assert tensor_digest(x) != tensor_digest(x.view(32, 64))  # same bytes, other shape
    assert tensor_digest(x) != tensor_digest(x.view(torch.int32))  # same bytes, other dtype
    assert tensor_digest(None) == 0
    assert 0 <= tensor_digest(x) < 2**63  # travels as an int64


def test_every_single_bit_flip_changes_the_fold_and_the_digest():
    x = torch.randn(3, 5)  # 60 bytes
    base_fold, base = fold(_raw(x)), tensor_digest(x)
    for byte in range(60):
        for bit in range(8):
            y = _flip(x, byte, bit)
            assert not torch.equal(fold(_raw(y)), base_fold), (byte, bit)
            assert tensor_digest(y) != base
    bf16 = torch.randn(7, dtype=torch.bfloat16)  # 14 bytes; and an odd byte count below
    assert tensor_digest(_flip(bf16, 13, 7)) != tensor_digest(bf16)
    odd = torch.arange(5, dtype=torch.uint8)
    assert not torch.equal(fold(_raw(_flip(odd, 4, 0))), fold(_raw(odd)))


def test_fold_sees_positions_not_just_values():
    x = torch.arange(10, dtype=torch.float32)
    swapped = x.clone()
    swapped[[2, 7]] = swapped[[7, 2]]
    assert not torch.equal(fold(_raw(x)), fold(_raw(swapped)))


def test_fold_is_exact_at_the_extremes_and_across_chunks():
    """All-ones words are the largest terms: each block's sum must equal the exact integer
    sum of its weights times 65535 (an overflow would wrap), and a tensor longer than one
    chunk folds to the same sums as its blocks folded one by one."""
    from tinylm.distributed.sync_check import _weights

    w = [int(v) for v in _weights(torch.device("cpu"))]
    ones = torch.full((2 * BLOCK,), 255, dtype=torch.uint8)  # one block of 0xFFFF words
    assert fold(ones).tolist() == [65535 * sum(w)]
    big = torch.randint(0, 256, (2 * CHUNK + 2 * 3 * BLOCK + 10,), dtype=torch.uint8)
    sums = fold(big)
    words = 2 * CHUNK // 2 + 3 * BLOCK + 5
    assert sums.numel() == -(-words // BLOCK)
    block = 1 + CHUNK // BLOCK  # a block of the second chunk, folded alone
    alone = fold(big[2 * block * BLOCK:2 * (block + 1) * BLOCK])
    assert alone.tolist() == [int(sums[block])]
