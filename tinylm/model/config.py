"""The model's shape: :class:`GPTConfig`, read by the model and written into every checkpoint.

Its own module so that what only needs the shape (the KV cache, the trainer's config, a
checkpoint's config.json) does not import the model.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional


def padded_vocab(vocab_size: int) -> int:
    """The rows of a model's embedding/head matrix for a tokenizer of ``vocab_size`` tokens:
    rounded up to a multiple of 64, so the head matmul gets aligned shapes."""
    return 64 * math.ceil(vocab_size / 64)


@dataclass
class GPTConfig:
    vocab_size: int = 8192  # the tokenizer's size (the model pads its matrix; see padded_vocab_size)
    block_size: int = 256  # context length; rotary positions need no table, so this only caps the cache
    n_layer: int = 6
    n_head: int = 6
    n_kv_head: Optional[int] = None  # key/value heads (grouped-query attention); None = n_head
    head_size: Optional[int] = None  # width of a head; None = n_embd / n_head (imports may differ)
    n_embd: int = 384  # head dim 64: the size SDPA kernels are tuned for
    mlp_hidden: int = 0  # 0 = Llama's rule, 8/3 * n_embd rounded up to a multiple of 64
    dropout: float = 0.0  # small models on small corpora may want 0.1; pretraining wants 0
    tie_embeddings: bool = True  # one matrix for input embedding and LM head (the point of tinylm)
    rope_theta: float = 10000.0  # Llama 2's base; plenty for contexts of a few thousand
    norm_eps: float = 1e-5  # Llama's RMSNorm epsilon
    init_std: float = 0.02  # GPT-2's init; residual projections get / sqrt(2 * n_layer)
    activation_checkpointing: bool = False  # recompute each block in backward: less memory, ~1/3 more compute

    def __post_init__(self) -> None:
        if self.head_size is None and self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.head_dim <= 0 or self.head_dim % 2 != 0:
            raise ValueError(f"head dim {self.head_dim} must be even and positive for rotary")
        if self.n_kv_head is not None and (self.n_kv_head <= 0 or self.n_head % self.n_kv_head):
            raise ValueError(f"n_kv_head={self.n_kv_head} must divide n_head={self.n_head}")
        for key in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, key) <= 0:
                raise ValueError(f"{key}={getattr(self, key)} must be positive")

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the embedding/head matrix: ``vocab_size`` rounded up to a multiple of 64,
        so the head matmul gets aligned shapes (nanoGPT reports 50257 -> 50304 as a large win on GPUs).
        The extra rows start at zero, are never an input id and never a logit column."""
        return padded_vocab(self.vocab_size)

    @property
    def head_dim(self) -> int:
        return self.head_size or self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def hidden_dim(self) -> int:
        if self.mlp_hidden:
            return self.mlp_hidden
        return 64 * math.ceil(8 * self.n_embd / 3 / 64)

    def to_dict(self) -> dict:
        return asdict(self)
