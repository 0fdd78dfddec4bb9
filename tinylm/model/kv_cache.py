"""The KV cache and the one-token decoding step's block math.

Incremental decoding keeps every layer's keys and values so that a new token attends to the
past without recomputing it. :class:`KVCache` holds them, preallocated, with the rotary tables
of every position; :func:`decode_block` is :func:`tinylm.model.gpt.block` specialised to one new
token per row, shared by :meth:`tinylm.model.gpt.GPT.decode_step` (eager, the position a Python
int) and :mod:`tinylm.infer.decode_graph` (fixed shapes, the position a tensor).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tinylm.model.config import GPTConfig
from tinylm.model.rotary import Rotary, rotary_cos_sin, rotation_matrices


def check_room(length: int, context: int) -> None:
    """The one error for a sequence longer than the context (a model's block size, or a
    cache's ``max_len``): every forward and decoding step raises it the same way."""
    if length > context:
        raise ValueError(f"sequence of {length} tokens exceeds the context ({context})")


class KVCache:
    """Keys and values of every layer for incremental decoding.

    Preallocated to ``max_len`` so decoding appends in place, with the rotary tables of every
    position computed once. ``pad_mask`` (B, max_len), True for real tokens, lets a batch of
    left-padded prompts decode together: rotary attention depends only on relative positions,
    so left padding needs no per-row position ids.
    """

    def __init__(self, config: GPTConfig, batch_size: int, max_len: int | None = None,
                 device=None, dtype: torch.dtype = torch.float32) -> None:
        self.max_len = max_len or config.block_size
        shape = (config.n_layer, batch_size, config.kv_heads, self.max_len, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.layers = [(self.k[i], self.v[i]) for i in range(config.n_layer)]  # views, once
        self.cos, self.sin = rotary_cos_sin(torch.arange(self.max_len, device=device),
                                            config.head_dim, config.rope_theta, dtype)
        self.pos = 0  # number of positions already filled
        self.pad_mask: torch.Tensor | None = None
        self._matrices: torch.Tensor | None = None  # built on the first one-token step
        self.weights: tuple | None = None  # the model's, for decoding steps (gpt.decode_weights)

    def rotary(self, T: int) -> Rotary:
        """The rotation for the next ``T`` positions; a one-token step gets its matrix."""
        if T != 1:
            return Rotary(self.cos[self.pos:self.pos + T], self.sin[self.pos:self.pos + T])
        return Rotary(None, None, self.rotation(self.pos))

    def rotations(self) -> torch.Tensor:
        """(max_len, D, D): rotary at every position as one matrix each, built on first use."""
        if self._matrices is None:
            self._matrices = rotation_matrices(self.cos, self.sin)
        return self._matrices

    def rotation(self, pos: int) -> torch.Tensor:
        """(D, D): rotary at position ``pos`` as one matrix."""
        return self.rotations()[pos]


def decode_block(x: torch.Tensor, weights: tuple[torch.Tensor, ...],
                 kv: tuple[torch.Tensor, torch.Tensor], rotation: torch.Tensor,
                 pos: int | torch.Tensor, mask: torch.Tensor | None,
                 heads: tuple[int, int, int], eps: float) -> torch.Tensor:
    """:func:`block` for one new token per row, x (B, C), on the weights of
    :func:`tinylm.model.gpt.decode_weights` (out-projections transposed); writes this position's keys
    and values into ``kv`` (this layer's cache slices, (B, KV, max_len, D)).

    ``pos`` an int (:meth:`GPT.decode_step`): attend over the positions filled so far.
    ``pos`` a (1,) device tensor (:mod:`tinylm.infer.decode_graph`, fixed shapes for a CUDA graph):
    write with ``index_copy_`` and attend over the whole cache, ``mask`` hiding what lies
    past ``pos``."""
    (H, KV, D), (B, C) = heads, x.shape
    norm1, qkv_w, o_t, norm2, gate_up_w, down_t = weights
    keys, values = kv
    qkv = F.linear(torch.rms_norm(x, (C,), norm1, eps), qkv_w)  # (B, (H + 2KV) D)
    qk = torch.mm(qkv[:, :(H + KV) * D].reshape(-1, D), rotation).view(B, H + KV, 1, D)
    if isinstance(pos, int):
        keys[:, :, pos] = qk[:, H:, 0]
        values[:, :, pos] = qkv[:, (H + KV) * D:].view(B, KV, D)
        keys, values = keys[:, :, :pos + 1], values[:, :, :pos + 1]
    else:
        keys.index_copy_(2, pos, qk[:, H:])
        values.index_copy_(2, pos, qkv[:, (H + KV) * D:].view(B, KV, 1, D))
    y = F.scaled_dot_product_attention(qk[:, :H], keys, values, attn_mask=mask,
                                       enable_gqa=KV != H)
    x = torch.addmm(x, y.view(B, H * D), o_t)
    gate, up = F.linear(torch.rms_norm(x, (C,), norm2, eps), gate_up_w).chunk(2, dim=-1)
    return torch.addmm(x, F.silu(gate).mul_(up), down_t)
