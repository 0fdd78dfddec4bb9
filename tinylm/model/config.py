"""The model's shape: :class:`GPTConfig`, read by the model and written into every checkpoint.

Its own module so that what only needs the shape (the KV cache, the trainer's config, a
checkpoint's config.json) does not import the model.

``layer_map`` shares blocks across depth: ``n_layer`` is the depth (blocks run), the map says
which unique block runs at each depth. ``repeat:2`` is MobileLLM's immediate block-wise
sharing ([0, 0, 1, 1, ...]), ``cycle:3`` ALBERT's / the Universal Transformer's loop
([0, 1, 2, 0, 1, 2, ...]), an explicit list the Parameter Golf "depth recurrence" records'
([0, 1, 2, 3, 4, 5, 4, 5, 6, 7]: blocks 4-5 run twice).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any, Optional


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
    layer_map: Any = None  # None: every depth its own block; "repeat:K", "cycle:K" or a list (see above)

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
        if isinstance(self.layer_map, (list, tuple)):
            self.layer_map = list(self.layer_map)  # (OmegaConf gives a ListConfig)
        self.depth_map  # noqa: B018 - validates the map now, with the config

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

    @property
    def depth_map(self) -> tuple[int, ...]:
        """The unique block run at each depth: ``layer_map`` resolved, ``n_layer`` long."""
        return resolve_layer_map(self.layer_map, self.n_layer)

    @property
    def n_unique_layers(self) -> int:
        """Unique blocks, each stored (and counted in the parameters) once."""
        return max(self.depth_map) + 1

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_layer_map(spec: Any, n_layer: int) -> tuple[int, ...]:
    """``layer_map`` as the block index of each depth; ValueError naming the map otherwise."""
    where = f"layer_map={spec!r}"
    if spec is None or spec == "":
        return tuple(range(n_layer))
    if isinstance(spec, str) and (m := re.fullmatch(r"\s*(repeat|cycle):(\d+)\s*", spec)):
        kind, k = m.group(1), int(m.group(2))
        if not 1 <= k <= n_layer or (kind == "repeat" and n_layer % k):
            need = "K dividing" if kind == "repeat" else "1 <= K <="
            raise ValueError(f"{where}: {kind}:K needs {need} n_layer={n_layer}")
        return tuple(i // k for i in range(n_layer)) if kind == "repeat" else tuple(
            i % k for i in range(n_layer))
    items = spec.strip(" []").split(",") if isinstance(spec, str) else spec
    try:
        blocks = [int(str(b).strip()) for b in items if str(b).strip()]
    except (TypeError, ValueError):
        raise ValueError(f"{where}: expected repeat:K, cycle:K or a list of block indices "
                         "like [0, 1, 2, 1, 2, 3]") from None
    if not blocks:
        raise ValueError(f"{where}: is empty; leave it unset for one block per depth")
    if len(blocks) != n_layer:
        raise ValueError(f"{where}: runs {len(blocks)} blocks but n_layer={n_layer} (n_layer is "
                         "the depth: the map names the block run at each depth)")
    unused = sorted(set(range(max(blocks) + 1)) - set(blocks))
    if min(blocks) < 0 or unused:
        missing = f"block {unused[0]} is never run" if unused else "a block index is negative"
        raise ValueError(f"{where}: {missing}; number the unique blocks 0..K-1")
    return tuple(blocks)
