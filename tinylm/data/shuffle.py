"""A seeded permutation of range(n) evaluated per index in O(1) memory, to shuffle training blocks.

Why not ``torch.randperm(n_blocks)``: it materialises n int64s, O(n) memory (2 GB of block ids
at 1 TB of tokens), rebuilt every epoch on every process. :class:`FeistelPermutation` stores
only a few round keys and computes ``perm(i)`` for any batch of indices on demand, as Levanter
does for its era shuffling (``levanter.data.permutation``, a Feistel-network permutation):

* a balanced Feistel network is a bijection of its domain whatever its round function, so
  every block is still visited exactly once per epoch, and ranks that take disjoint slices
  of permuted positions read disjoint blocks;
* the domain is the smallest power of 4 >= n (two halves of k bits); cycle walking (apply
  the network again while the value is >= n) restricts it to a bijection of exactly [0, n),
  and since the domain is < 4n the expected walk is < 4 applications;
* the round function is the splitmix64 finalizer in uint64 arithmetic and the round keys
  come from ``np.random.SeedSequence``: only integer operations, so the order is the same
  on every platform and numpy version.
"""

from __future__ import annotations

import numpy as np

# splitmix64 finalizer constants (Steele, Lea & Flood 2014; the murmur3-style 64-bit mix).
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a strong 64-bit mix (every input bit affects every output
    bit), so the low k bits the round function keeps look random even for tiny k."""
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


class FeistelPermutation:
    """A seeded bijection of range(n), evaluated per index in O(1) memory."""

    def __init__(self, n: int, seed: int, rounds: int = 4) -> None:
        n, seed, rounds = int(n), int(seed), int(rounds)
        if not 0 <= n < 2**63:
            raise ValueError(f"n must be in [0, 2**63), got {n}")
        if rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {rounds}")
        self.n, self.seed, self.rounds = n, seed, rounds
        # Half width k >= 1 with 4**k >= n: the domain 2**(2k) is the smallest power of 4 >= n.
        self.half_bits = max(1, ((max(n, 1) - 1).bit_length() + 1) // 2)
        self._mask = np.uint64((1 << self.half_bits) - 1)
        # SeedSequence wants non-negative entropy; the sign word keeps seed and -seed apart.
        entropy = [abs(seed), int(seed < 0)]
        self._keys = np.random.SeedSequence(entropy).generate_state(rounds, dtype=np.uint64)

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return f"FeistelPermutation(n={self.n}, seed={self.seed}, rounds={self.rounds})"

    def _network(self, x: np.ndarray) -> np.ndarray:
        """One pass of the Feistel network over the domain [0, 4**k): (L, R) -> (R, L ^ F(R))
        per round, a bijection whatever F is."""
        k = np.uint64(self.half_bits)
        left, right = x >> k, x & self._mask
        for key in self._keys:
            left, right = right, left ^ (_mix64(right * _GOLDEN + key) & self._mask)
        return (left << k) | right

    def __call__(self, idx: np.ndarray | int) -> np.ndarray | int:
        """``perm(i)`` for an int (-> int) or an integer array of indices in [0, n) (-> an
        int64 array of the same shape). Raises IndexError for an index outside [0, n)."""
        scalar = isinstance(idx, (int, np.integer))
        if scalar and not 0 <= int(idx) < self.n:
            raise IndexError(f"index {int(idx)} out of range for a permutation of {self.n}")
        arr = np.asarray(idx)
        if arr.size and arr.dtype.kind not in "iu":
            raise TypeError(f"indices must be integers, got dtype {arr.dtype}")
        if arr.size and (
            (arr.dtype.kind == "i" and arr.min() < 0) or int(arr.max()) >= self.n
        ):
            raise IndexError(f"indices out of range [0, {self.n}): "
                             f"min {int(arr.min())}, max {int(arr.max())}")
        with np.errstate(over="ignore"):  # uint64 wraparound is intended
            out = self._network(arr.astype(np.uint64).reshape(-1))
            walk = np.flatnonzero(out >= np.uint64(self.n))
            while walk.size:  # cycle walking: the cycle through an index in [0, n) returns there
                out[walk] = self._network(out[walk])
                walk = walk[out[walk] >= np.uint64(self.n)]
        out = out.astype(np.int64).reshape(arr.shape)
        return int(out) if scalar else out
