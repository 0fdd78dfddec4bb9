"""Per-row symmetric quantization of weight matrices, and the bit packing of the codes.

A matrix ``w`` (rows, cols) becomes integer codes ``q`` in [-qmax, qmax] and one fp16 scale
per row, ``w ~ q * scale``: the round trip Parameter Golf scores its artifacts after (int8
for the naive baseline, int6 for most records). The clip (the largest magnitude a row keeps;
larger entries saturate) is chosen per row, one of:

- ``absmax``: the row's largest magnitude, no saturation; outliers stretch the grid;
- ``std``: ``STD_CLIP[bits]`` standard deviations (a rule, no search);
- ``search``: the best of ``SEARCH_GRID`` fractions of the row's largest magnitude, by the
  row's squared reconstruction error (what GPTQ-free golf entries do per row).

``benchmarks/bench_golf.py`` measures which gives the lowest bits per byte after the round
trip. Codes are stored as int8 (8 bits) or packed 4 codes into 3 bytes (6 bits), so a file's
size before compression is exactly ``bits`` per weight plus 16 bits per row.
"""

from __future__ import annotations

import numpy as np
import torch

BITS = (8, 6)  # what an artifact can hold; fewer bits cost more than they save at these sizes
CLIPS = ("search", "std", "absmax")
STD_CLIP = {8: 12.0, 6: 4.0}  # int6's 63 levels cannot afford the tails int8's 255 can
SEARCH_GRID = torch.linspace(0.3, 1.0, 36)  # fractions of a row's largest magnitude


def qmax(bits: int) -> int:
    """The largest code: symmetric, so 0 is exact and -qmax..qmax is 2^bits - 1 levels."""
    return 2 ** (bits - 1) - 1


def _codes(w: torch.Tensor, clip: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes and fp16 scales of ``w`` (float32, rows x cols) at per-row ``clip`` (rows, 1)."""
    scale = (clip / qmax(bits)).clamp_min(torch.finfo(torch.float16).tiny).half()
    q = torch.round(w / scale.float()).clamp_(-qmax(bits), qmax(bits)).to(torch.int8)
    return q, scale.squeeze(1)


def quantize_rows(w: torch.Tensor, bits: int, clip: str = "search") -> tuple[torch.Tensor, torch.Tensor]:
    """(codes int8 (rows, cols), scales fp16 (rows,)) of matrix ``w``; see the module docstring."""
    if bits not in BITS:
        raise ValueError(f"bits={bits}: expected one of {', '.join(map(str, BITS))}")
    if clip not in CLIPS:
        raise ValueError(f"clip={clip!r}: expected one of {', '.join(CLIPS)}")
    w = w.detach().float()
    absmax = w.abs().amax(dim=1, keepdim=True)
    if clip == "absmax":
        return _codes(w, absmax, bits)
    if clip == "std":
        return _codes(w, torch.minimum(absmax, STD_CLIP[bits] * w.std(dim=1, keepdim=True)), bits)
    best_err = torch.full_like(absmax, float("inf"))
    best_clip = absmax.clone()
    for frac in SEARCH_GRID:
        q, scale = _codes(w, absmax * frac, bits)
        err = (q.float() * scale.float()[:, None] - w).pow(2).sum(dim=1, keepdim=True)
        better = err < best_err
        best_err, best_clip = torch.where(better, err, best_err), torch.where(better, absmax * frac, best_clip)
    return _codes(w, best_clip, bits)


def fake_quant(w: torch.Tensor, bits: int) -> torch.Tensor:
    """``w`` as its per-row absmax round trip in the forward, ``w`` itself in the backward
    (the straight-through estimator): quantization-aware training's view of a weight, so the
    last steps learn weights that survive packing. absmax, not the search: it runs every step."""
    scale = w.detach().abs().amax(dim=-1, keepdim=True).clamp_min(1e-12) / qmax(bits)
    q = torch.round(w.detach() / scale).clamp_(-qmax(bits), qmax(bits))
    return w + (q * scale - w).detach()


def dequantize_rows(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """float32 ``q * scale`` row by row: the weights a packed model computes with."""
    return q.float() * scale.float()[:, None]


def pack_codes(q: torch.Tensor, bits: int) -> bytes:
    """The codes as bytes: int8 as they are; 6 bits as 4 codes (offset to 0..63) per 3 bytes."""
    flat = q.reshape(-1).numpy().astype(np.int16)
    if bits == 8:
        return flat.astype(np.int8).tobytes()
    u = (flat + qmax(6) + 1).astype(np.uint32)  # -31..31 -> 1..63
    u = np.concatenate([u, np.zeros(-len(u) % 4, np.uint32)]).reshape(-1, 4)
    word = u[:, 0] | (u[:, 1] << 6) | (u[:, 2] << 12) | (u[:, 3] << 18)  # 24 bits
    return np.stack([word & 255, (word >> 8) & 255, word >> 16], axis=1).astype(np.uint8).tobytes()


def packed_size(n: int, bits: int) -> int:
    """Bytes :func:`pack_codes` writes for ``n`` codes."""
    return n if bits == 8 else 3 * ((n + 3) // 4)


def unpack_codes(data: bytes, bits: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: int8 codes of ``shape``."""
    n = int(np.prod(shape))
    if bits == 8:
        return torch.from_numpy(np.frombuffer(data, np.int8, count=n).copy()).reshape(shape)
    b = np.frombuffer(data, np.uint8).reshape(-1, 3).astype(np.uint32)
    word = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
    u = np.stack([(word >> s) & 63 for s in (0, 6, 12, 18)], axis=1).reshape(-1)[:n]
    return torch.from_numpy(u.astype(np.int16) - (qmax(6) + 1)).to(torch.int8).reshape(shape)
