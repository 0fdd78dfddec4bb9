"""The one-token decoding step at fixed shapes, run as one graph: a CUDA graph on a GPU, and
on a CPU, when asked, one torch.compile'd kernel program.

Why: a batch-1 step of gpt2-small is ~200 kernels of a few microseconds each, and launching
them one by one from Python is the step's whole cost: on an H200 the eager KV-cached decoder
made 373 tokens/s (2.7 ms per token, ``benchmarks/gpu.py``, 2026-11-27), where the arithmetic
takes tens of microseconds. A CUDA graph records the step's kernels once and launches them
all with one call. On a CPU the same holds at small widths (~60 ops of ~6 us at nanoGPT's
shape): inductor fuses them into a few C++ loops called from C++ (``cpp_wrapper``), for
~1.6x faster steps after ~10 s of compiling (docs/performance.md), which only a long
generation repays: hence opt-in (``generate(..., compile=True)``, ``tinylm generate --compile``).

A graph replays fixed addresses and shapes, so :class:`GraphedDecoder`'s step differs from
:meth:`GPT.decode_step` in three ways, all inside :func:`tinylm.model.kv_cache.decode_block`:

* the position is a (1,) device tensor, not a Python int: the cache write is an
  ``index_copy_`` and the rotary matrix an ``index_select`` of the cache's table;
* attention runs over the whole cache, with a mask hiding the positions past the current
  one (they add exp(-inf) = 0 to the softmax: the same distribution, up to rounding);
* the inputs (token ids, position, pad mask) are copied into buffers the graph reads.

The fixed-shape step also runs eagerly (tests compare it with ``decode_step``).
:func:`tinylm.infer.generate.generate` uses it, through :func:`graphed_decoder`, on CUDA for a plain
:class:`GPT` and on a CPU with ``compile=True``, and keeps ``decode_step`` everywhere else
(eagerly the fixed-shape step only adds work: a longer attention, a mask).

A capture costs two eager steps and the capture itself: on the H200 that was most of a
100-token generation's time when every ``generate`` call captured anew (1.8x over eager,
not more). So the last decoder made for a model (its cache and graph) is kept beside the
model and reused while the batch size and the weights it was captured on are the same.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F

from tinylm.model.gpt import GPT, decode_weights, is_plain
from tinylm.model.kv_cache import KVCache, check_room, decode_block

WARMUP_STEPS = 2  # eager runs on a side stream before capture, as torch.cuda.graphs asks
_LAST: "weakref.WeakKeyDictionary[GPT, GraphedDecoder]" = weakref.WeakKeyDictionary()


def _weight_ptrs(model: GPT) -> tuple[int, ...]:
    """Where the weights a graph reads live: a move, a cast or a re-tie changes it."""
    tensors = [model.embed_tokens.weight, model.norm.weight, model.lm_head.weight]
    tensors += [w for b in model.layers for w in b.weights()]
    return tuple(t.data_ptr() for t in tensors)


def graphed_decoder(model: GPT, batch: int, compile: bool = False) -> "GraphedDecoder | None":
    """The decoder for a generation of ``batch`` rows on ``model`` (a CUDA device): the one
    kept from the model's last generation when its batch size and weights' addresses are
    unchanged (its cache is re-prefilled from position 0 by the caller), else a new one,
    which replaces it (one cache per model stays allocated). None for a model that must run
    as modules (a subclass, hooks)."""
    last = _LAST.pop(model, None)  # (popped: a model that grew hooks keeps no graph)
    if not is_plain(model):
        return None
    if (last is not None and last.batch == batch and last.compiled == compile
            and last.ptrs == _weight_ptrs(model)):
        last.refresh(model)
        _LAST[model] = last
        return last
    del last  # free the old cache and graph before allocating the new ones
    cache = KVCache(model.config, batch, device=model.lm_head.weight.device,
                    dtype=model.lm_head.weight.dtype)
    _LAST[model] = decoder = GraphedDecoder(model, cache, compile)
    return decoder


class GraphedDecoder:
    """One generation's one-token step: ``step(ids)`` is ``model.decode_step(ids, cache)``,
    captured as a CUDA graph on its first call when the model is on a CUDA device, compiled
    on its first call with ``compile=True`` elsewhere, else run eagerly.

    Bound to one cache (its key/value tensors are the graph's memory) and one batch size.
    The pad mask is read from ``cache.pad_mask`` at every step, so a re-prefill that replaces
    it (generate's window re-starts) needs no re-capture. Holds the model's weights, not the
    model (so :data:`_LAST` lets a model go)."""

    def __init__(self, model: GPT, cache: KVCache, compile: bool = False) -> None:
        weights = decode_weights(model, cache)
        if weights is None:
            raise ValueError("GraphedDecoder needs a plain GPT (no subclass, no module hooks)")
        self.config, self.cache, self.weights = model.config, cache, weights
        self.ptrs = _weight_ptrs(model)
        self.batch = B = cache.k.shape[1]
        L, device = cache.max_len, cache.k.device
        self.ids = torch.zeros(B, 1, dtype=torch.long, device=device)
        self.pos = torch.zeros(1, dtype=torch.long, device=device)
        self.pad = torch.ones(B, L, dtype=torch.bool, device=device)
        self.positions = torch.arange(L, device=device)
        self.rotations = cache.rotations()  # (max_len, D, D): the step indexes it by position
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None  # the graph's output buffer
        self.use_graph = device.type == "cuda"
        self.compiled = compile
        self._run = self._step
        if compile and not self.use_graph:  # fixed shapes: one compile, no recompiles
            self._run = torch.compile(self._step, dynamic=False, fullgraph=True,
                                      options={"cpp_wrapper": True})

    def refresh(self, model: GPT) -> None:
        """Bring the copies among the weights up to date: on a CPU the head is a transposed
        copy (``tinylm.model.gpt.decode_weights``), stale once training updates the model in place.
        Copied into the same buffer, so a compiled program or graph keeps reading it."""
        head_t, weight = self.weights[3], model.lm_head.weight
        if head_t.data_ptr() != weight.data_ptr():
            head_t.copy_(weight.t())

    def _step(self) -> torch.Tensor:
        """The fixed-shape step on the buffers: logits (B, vocab_size)."""
        c, cache = self.config, self.cache
        embed_w, blocks, norm_w, head_t = self.weights
        heads, eps = (c.n_head, c.kv_heads, c.head_dim), c.norm_eps
        rotation = self.rotations.index_select(0, self.pos)[0]  # (D, D)
        mask = ((self.positions <= self.pos) & self.pad)[:, None, None, :]  # (B, 1, 1, L)
        x = F.embedding(self.ids.view(-1), embed_w)
        for weights, kv in zip(blocks, cache.layers):
            x = decode_block(x, weights, kv, rotation, self.pos, mask, heads, eps)
        logits = torch.mm(torch.rms_norm(x, (c.n_embd,), norm_w, eps), head_t)
        return logits[:, :c.vocab_size]

    def _capture(self) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # same position, same inputs: rewrites the same slot
            for _ in range(WARMUP_STEPS):
                self._step()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = self._step()

    def step(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits (B, vocab_size) after one new token per row, ids (B, 1), at ``cache.pos``;
        advances the cache. A full cache raises ``check_room``'s error, as ``GPT.forward`` does."""
        cache = self.cache
        check_room(cache.pos + 1, cache.max_len)
        self.ids.copy_(ids)
        self.pos.fill_(cache.pos)
        if cache.pad_mask is None:
            self.pad.fill_(True)
        else:
            self.pad.copy_(cache.pad_mask)
        if not self.use_graph:
            logits = self._run()
        else:
            if self.graph is None:
                self._capture()
            self.graph.replay()
            logits = self.logits.clone()  # the buffer is overwritten by the next replay
        cache.pos += 1
        return logits
