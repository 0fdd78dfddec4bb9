"""A small pre-norm GPT decoder whose token embedding and LM head are one Parameter.

The architecture is Llama's (RMSNorm, rotary positions, SwiGLU MLP, no biases) so that a
checkpoint maps onto ``transformers.LlamaForCausalLM`` with ``tie_word_embeddings=True``:
names follow Llama's (``embed_tokens``, ``layers.i.self_attn``, ``mlp``, ``norm``,
``lm_head``) except that q/k/v and gate/up are fused into one matmul each for speed (an export
splits them back), and rotary uses Llama's rotate-half layout.

Reads top to bottom: config, the block math (:func:`block`, defined once: training, prefill
and, specialised to one token in :func:`tinylm.model.kv_cache.decode_block`, :meth:`GPT.decode_step`
all run it), the modules that hold the weights, the model. Rotary positions live in
:mod:`tinylm.model.rotary`, the KV cache in :mod:`tinylm.model.kv_cache`. Vocab padding lives here too: ``vocab_size`` is the tokenizer's, the tied
matrix has ``padded_vocab_size`` rows, and logits have exactly ``vocab_size`` columns.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from tinylm.model.config import GPTConfig
from tinylm.model.kv_cache import KVCache, check_room, decode_block
from tinylm.model.quant import fake_quant
from tinylm.model.rotary import Rotary, rotary_cos_sin
from tinylm.sharing.tying import TieGuarded, share_modules, tie


class RMSNorm(nn.Module):
    """RMSNorm with a learned scale: cheaper than LayerNorm and what Llama uses."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.size(-1),), self.weight, self.eps)


def is_plain(model: "GPT") -> bool:
    """Whether the lean one-token path may read ``model``'s weights directly: a GPT of plain
    Blocks whose modules carry no hooks (FSDP, tracing and subclasses must run as modules)."""
    mods = [model, model.embed_tokens, model.norm, model.lm_head, *model.layers]
    return (type(model) is GPT and all(type(b) is Block for b in model.layers)
            and not any(m._forward_hooks or m._forward_pre_hooks for m in mods))


def decode_weights(model: "GPT", cache: KVCache) -> tuple | None:
    """(embedding, each block's weights, final norm, head) of ``model``, gathered into
    ``cache`` on the first decoding step for :meth:`GPT.decode_step` (the model's own tensors
    and views of them; on a CPU the head is also copied once, transposed). None when the
    model or a block is a subclass, or a module carries hooks (FSDP, tracing): those must be
    called as modules."""
    if cache.weights is None:
        # Transposed views made once, not per step. On a CPU the head becomes a contiguous
        # (C, V) copy, one per generation: x @ W^T with W^T laid out by rows is ~1.8x
        # faster at batch 1 than F.linear there (docs/performance.md). GPU BLAS takes the
        # transposed view as it is, so no copy is made there.
        cache.weights = ()
        if is_plain(model):
            blocks = [(n1, qkv, o.t(), n2, gu, down.t())
                      for n1, qkv, o, n2, gu, down in (b.weights() for b in model.layers)]
            head_t = model.lm_head.weight.t()
            if head_t.device.type == "cpu":
                head_t = head_t.contiguous()
            cache.weights = (model.embed_tokens.weight, blocks, model.norm.weight, head_t)
    return cache.weights or None


# -- the block math, defined once: training, prefill and decoding steps all run block() --------

def block(x: torch.Tensor, weights: tuple[torch.Tensor, ...], heads: tuple[int, int], eps: float,
          rotary: Rotary, layer: int, cache: KVCache | None, mask,
          dropout: float = 0.0) -> torch.Tensor:
    """One pre-norm transformer block on x (B, T, C); ``weights`` as :meth:`Block.weights`;
    ``heads`` = (query heads, key/value heads, head width).

    Attention: one fused q/k/v matmul (rows: the q heads, then k's, then v's), rotary on q and
    k together, grouped-query attention when there are fewer key/value heads, this layer's slice of the
    KV cache (when decoding), SDPA, the output projection. MLP: SwiGLU, gate and up in one
    matmul. One flat function on purpose: a decoding step is ~40 tiny ops, where the calls
    between modules and functions would cost a third of its time on a CPU.
    """
    norm1, qkv_w, o_w, norm2, gate_up_w, down_w = weights
    (H, KV, D), (B, T, C) = heads, x.shape
    qkv = F.linear(F.rms_norm(x, (C,), norm1, eps), qkv_w).view(B, T, H + 2 * KV, D)
    q, k = rotary(qkv[:, :, :H + KV], H)  # (B, H, T, D), (B, KV, T, D)
    v = qkv[:, :, H + KV:].transpose(1, 2)
    if cache is not None:  # append this step's keys and values, attend over all so far
        keys, values = cache.layers[layer]
        start, end = cache.pos, cache.pos + T
        keys[:, :, start:end], values[:, :, start:end] = k, v
        k, v = keys[:, :, :end], values[:, :, :end]
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and T > 1,
                                       dropout_p=dropout, enable_gqa=KV != H)
    y = y.view(B, 1, H * D) if T == 1 else y.transpose(1, 2).reshape(B, T, H * D)  # heads side by side
    h = F.linear(y, o_w)
    x = x + (F.dropout(h, dropout) if dropout else h)
    gate, up = F.linear(F.rms_norm(x, (C,), norm2, eps), gate_up_w).chunk(2, dim=-1)
    h = F.linear(F.silu(gate) * up, down_w)
    return x + (F.dropout(h, dropout) if dropout else h)


class Attention(nn.Module):
    """The attention weights, under Llama's names (q/k/v fused); the math is :func:`block`."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        q_dim, kv_dim = config.n_head * config.head_dim, config.kv_heads * config.head_dim
        self.qkv_proj = nn.Linear(config.n_embd, q_dim + 2 * kv_dim, bias=False)
        self.o_proj = nn.Linear(q_dim, config.n_embd, bias=False)


class MLP(nn.Module):
    """The SwiGLU weights (gate and up fused); the math is :func:`block`. SwiGLU: at equal
    parameter count it trains to lower loss than GELU (Shazeer 2020), and it is Llama's MLP,
    which keeps the export door open."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.gate_up_proj = nn.Linear(config.n_embd, 2 * config.hidden_dim, bias=False)
        self.down_proj = nn.Linear(config.hidden_dim, config.n_embd, bias=False)


class Block(nn.Module):
    """Modules hold the weights (names follow Llama's); the math is :func:`block`."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.n_embd, config.norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.n_embd, config.norm_eps)
        self.mlp = MLP(config)
        self.heads = (config.n_head, config.kv_heads, config.head_dim)
        self.eps, self.dropout = config.norm_eps, config.dropout
        self.fake_quant_bits: int | None = None  # QAT (optim.qat_from): matrices seen quantized

    def weights(self) -> tuple[torch.Tensor, ...]:
        a, m = self.self_attn, self.mlp
        w = (self.input_layernorm.weight, a.qkv_proj.weight, a.o_proj.weight,
             self.post_attention_layernorm.weight, m.gate_up_proj.weight, m.down_proj.weight)
        if self.fake_quant_bits is None:
            return w
        return tuple(fake_quant(x, self.fake_quant_bits) if x.dim() == 2 else x for x in w)

    def forward(self, x, rotary: Rotary, layer: int, cache: KVCache | None, mask) -> torch.Tensor:
        return block(x, self.weights(), self.heads, self.eps, rotary, layer, cache, mask,
                     self.dropout if self.training else 0.0)


class GPT(TieGuarded):
    """Decoder-only transformer; ``embed_tokens.weight`` is ``lm_head.weight`` when tied."""

    def __init__(self, config: GPTConfig) -> None:
        """Built where ``torch.get_default_device()`` says. Under ``with torch.device("meta")``
        nothing is allocated or initialised (see :func:`materialize`). Elsewhere the
        submodules are made on meta first, so their own default inits draw no random numbers:
        :meth:`reset_parameters` is the only consumer of the RNG, and an eager model and a
        meta-built one materialised from the same seed are equal."""
        super().__init__()
        self.config = config
        device = torch.get_default_device()
        with torch.device("meta"):
            self.embed_tokens = nn.Embedding(config.padded_vocab_size, config.n_embd)
            self.drop = nn.Dropout(config.dropout)
            blocks = [Block(config) for _ in range(config.n_unique_layers)]
            # one entry per depth; depths that share a block hold the same instance
            self.layers = nn.ModuleList(blocks[b] for b in config.depth_map)
            self.norm = RMSNorm(config.n_embd, config.norm_eps)
            self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        if config.tie_embeddings:
            tie(self.embed_tokens, "weight", self.lm_head, "weight")
        share_modules(self, ([f"layers.{d}" for d, b in enumerate(config.depth_map) if b == u]
                             for u in range(config.n_unique_layers)))
        if device.type != "meta":
            self.to_empty(device=device)
            self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """GPT-2 init: N(0, 0.02) everywhere, residual projections scaled by 1/sqrt(2L) so the
        residual stream's variance does not grow with depth. With the tied matrix at std 0.02
        the initial logits are near zero, so the initial loss is ~ln(vocab_size)."""
        std = self.config.init_std
        for name, p in self.named_parameters():  # the tied matrix is visited once
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, 0.0, std / math.sqrt(2 * self.config.n_layer))
            elif p.dim() >= 2:
                nn.init.normal_(p, 0.0, std)
            else:
                nn.init.ones_(p)  # RMSNorm scales
        for m in (self.embed_tokens, self.lm_head):  # padding rows: no token, no logit
            m.weight[self.config.vocab_size:].zero_()

    def set_fake_quant(self, bits: int | None) -> None:
        """Quantization-aware training: from now on every block computes with its matrices'
        ``bits``-bit round trip (gradients pass straight through to the float weights), or,
        with None, with the weights as they are. Not saved: a run turns it on from
        ``optim.qat_from``; a checkpoint holds the float weights that ``tinylm pack`` quantizes."""
        for block in dict.fromkeys(self.layers):
            block.fake_quant_bits = bits

    # -- the transformers convention ---------------------------------------------------------
    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    # -- size and cost -----------------------------------------------------------------------
    def num_params(self) -> int:
        """Unique parameters: the tied matrix counts once, with its padding rows, and a block
        shared across depth once."""
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward), the PaLM appendix B formula.

        6 per matmul weight (the norm scales are no matmul, nor is the embedding lookup; the
        tied matrix is counted once, as the head, padding rows included: they are computed),
        plus attention scores and values, 12 * layers * heads * head_dim * seq_len. A block
        shared across depth is counted at every depth it runs: parameters are stored once,
        compute is paid per use. Tested against torch's FlopCounterMode.
        """
        c, T = self.config, seq_len or self.config.block_size
        per_depth = sum(p.numel() for b in self.layers for p in b.parameters() if p.dim() >= 2)
        return 6 * (per_depth + self.lm_head.weight.numel()) + 12 * c.n_layer * c.n_head * c.head_dim * T

    # -- forward -----------------------------------------------------------------------------
    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: KVCache | None = None,
        last_only: bool = False,
    ):
        """Logits (B, T, vocab_size) for token ids (B, T); with ``targets`` also the mean
        cross-entropy over targets that are not -100, as ``(logits, loss)``.

        ``cache`` continues from ``cache.pos`` and advances it; ``last_only`` computes logits
        for the last position only (what sampling needs).
        """
        B, T = idx.shape
        start = cache.pos if cache is not None else 0
        check_room(start + T, cache.max_len if cache is not None else self.config.block_size)
        c = self.config
        x = self.embed_tokens(idx)
        if c.dropout and self.training:
            x = self.drop(x)
        if cache is not None:  # tables computed once per generation
            rotary = cache.rotary(T)
        else:
            rotary = Rotary(*rotary_cos_sin(torch.arange(T, device=idx.device), c.head_dim,
                                            c.rope_theta, x.dtype))
        mask = self._attention_mask(cache, T, idx.device)
        recompute = self.config.activation_checkpointing and self.training and torch.is_grad_enabled()
        for i, layer in enumerate(self.layers):
            if recompute:  # keep only each block's input; its activations are made again in backward
                x = torch.utils.checkpoint.checkpoint(layer, x, rotary, i, cache, mask,
                                                      use_reentrant=False)
            else:
                x = layer(x, rotary, i, cache, mask)
        if cache is not None:
            cache.pos += T
        if last_only:
            x = x[:, -1:]
        logits = self.lm_head(self.norm(x))
        if c.padded_vocab_size != c.vocab_size:
            logits = logits[..., :c.vocab_size]  # a view: the padding rows are no token
        if targets is None:
            return logits
        loss = F.cross_entropy(
            logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100
        )
        return logits, loss

    def decode_step(self, ids: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Logits (B, vocab_size) after feeding one new token per row, ids (B, 1), at
        ``cache.pos``; advances the cache. Call it under ``torch.inference_mode()``, as
        :func:`tinylm.infer.generate.generate` does.

        :func:`block`'s math specialised to one position, on the same weights: at batch 1 a
        step is ~60 tiny ops, so their count is its cost (docs/performance.md profiles it).
        No module calls or Rotary objects; q and k rotated by one (D, D) matmul; each residual
        add folded into its projection (``addmm``); no (B, T) reshapes. Tested equal to
        :meth:`forward`. A model whose modules carry hooks (FSDP), or a subclass, goes through
        :meth:`forward` instead."""
        weights = decode_weights(self, cache)
        if weights is None or cache.pos >= cache.max_len:  # (forward raises the overflow)
            return self(ids, cache=cache, last_only=True)[:, -1]
        embed_w, blocks, norm_w, head_t = weights
        c, B, pos = self.config, ids.size(0), cache.pos
        H, KV, D, C, eps = c.n_head, c.kv_heads, c.head_dim, c.n_embd, c.norm_eps
        rotation, end = cache.rotation(pos), pos + 1
        mask = None if cache.pad_mask is None else cache.pad_mask[:, None, None, :end]
        x = F.embedding(ids.view(B), embed_w)  # (B, C)
        for weights, kv in zip(blocks, cache.layers):
            x = decode_block(x, weights, kv, rotation, pos, mask, (H, KV, D), eps)
        cache.pos = end
        logits = torch.mm(torch.rms_norm(x, (C,), norm_w, eps), head_t)
        return logits[:, :c.vocab_size] if c.padded_vocab_size != c.vocab_size else logits

    @staticmethod
    def _attention_mask(cache: KVCache | None, T: int, device) -> torch.Tensor | None:
        """None (SDPA's causal path, or no mask for one new token) unless padding or a chunk
        after a prefix needs one."""
        if cache is None:
            return None
        end = cache.pos + T
        if cache.pad_mask is None and (T == 1 or cache.pos == 0):
            return None  # one query sees every key; a first chunk is plain causal
        if T == 1:  # the newest position sees every real key: only padding is masked
            return cache.pad_mask[:, None, None, :end]
        q_pos = torch.arange(cache.pos, end, device=device)[:, None]
        mask = torch.arange(end, device=device)[None, :] <= q_pos  # (T, end) causal
        if cache.pad_mask is not None:
            mask = mask & cache.pad_mask[:, None, None, :end]  # (B, 1, T, end)
            # A padding query would see no key at all and SDPA would return NaN for it; let
            # every position see itself. Real tokens never attend to padding either way.
            mask = mask | (torch.arange(end, device=device)[None, :] == q_pos)
        return mask


def materialize(model: GPT, device: str | torch.device, seed: int | None = None) -> GPT:
    """Allocate a meta-built ``model`` on ``device`` and initialise it (from ``seed`` if
    given), ties intact: ``to_empty`` keeps each Parameter object (the tie guard re-joins any
    a conversion split and checks), and :meth:`GPT.reset_parameters` visits the tied matrix
    once. Large models are built this way so that no full-size random init is ever made on
    the wrong device, and a resume (whose weights come from the checkpoint) skips it."""
    model.to_empty(device=device)
    if seed is not None:
        torch.manual_seed(seed)
    model.reset_parameters()
    return model
