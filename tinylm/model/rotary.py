"""Rotary position embeddings (RoPE), Llama's rotate-half layout.

Queries and keys are rotated by an angle that grows with their position, so attention scores
depend on relative positions only: what lets a left-padded row decode as it would alone, and
what an export to ``transformers``' Llama must match exactly. Two forms of the same rotation:
cos/sin tables for many positions (training, prefill), and one (D, D) matrix per position
(a decoding step: one matmul instead of a handful of tiny elementwise kernels).
"""

from __future__ import annotations

import torch


def rotary_cos_sin(
    positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables for the given absolute positions, computed in fp32 then cast.

    Computed per forward in training (a (T, head_dim) outer product, negligible) rather than
    kept as buffers, so ``.to(bfloat16)`` cannot degrade them and nothing caps the length; a
    :class:`KVCache` computes them once per generation.
    """
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim)
    freqs = torch.outer(positions.float(), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotation_matrices(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """(T, D, D) matrices with ``x @ m[t] == x * cos[t] + rotate_half(x) * sin[t]``."""
    d = cos.size(-1)
    eye = torch.eye(d, device=cos.device, dtype=cos.dtype)
    half = torch.cat((-eye[:, d // 2:], eye[:, :d // 2]), dim=-1)  # rows rotate basis vectors
    return eye * cos[:, None, :] + half * sin[:, None, :]


class Rotary:
    """Rotates queries and keys by their positions; Llama's rotate-half layout.

    q and k are rotated together, as the fused projection lays them out: (B, T, 2, H, D).
    For one new position (a decoding step) ``matrix`` (D, D) does it in one matmul instead of
    a handful of tiny elementwise kernels per layer, which is most of a batch-1 step's cost on
    a CPU. Both forms are the same rotation.
    """

    def __init__(self, cos: torch.Tensor | None, sin: torch.Tensor | None,
                 matrix: torch.Tensor | None = None) -> None:
        self.cos, self.sin, self.matrix = cos, sin, matrix  # (T, D) each, or one (D, D)

    def __call__(self, qk: torch.Tensor, n_q: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, n_q + n_kv, D), the q heads then the k heads -> rotated q (B, n_q, T, D)
        and k (B, n_kv, T, D)."""
        B, T, heads, D = qk.shape
        if self.matrix is not None:  # one position: everything else folds into one mm
            out = torch.mm(qk.reshape(-1, D), self.matrix).view(B, heads, 1, D)
            return out.split([n_q, heads - n_q], dim=1)
        cos, sin = self.cos[:, None, :], self.sin[:, None, :]  # over the heads
        x1, x2 = qk.chunk(2, dim=-1)
        out = qk * cos + torch.cat((-x2, x1), dim=-1) * sin
        return out.transpose(1, 2).split([n_q, heads - n_q], dim=1)
