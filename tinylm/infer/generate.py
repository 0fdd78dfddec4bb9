"""Text generation: batched, streamed, KV-cached sampling from a tinylm GPT.

Several prompts decode together as one left-padded batch: ``KVCache.pad_mask`` hides the
padding, and rotary attention depends only on relative positions, so a padded row sees exactly
what it would see alone.

Context policy (the model was trained on ``block_size`` tokens and never sees more). Each row
has its own window: the tokens the model sees for it, the end of its prompt and output. A
window grows by one token per step, and re-starts in strides of ``span = block_size // 4``
new tokens: before new tokens 0, span, 2*span, ..., every window longer than
``keep = block_size - span + 1`` tokens is cut to its last ``keep``, so that it can take the
next ``span`` tokens without passing the context. Consequences:

* A prompt longer than ``keep`` (3/4 of the context, plus one) is cropped from the left to
  its last ``keep`` tokens, with a ``UserWarning``.
* Windows hold between 3/4 and all of the context, about 7/8 on average. Why not slide by one
  token? A sliding window cannot reuse a cache (the earliest cached keys were computed from
  context that has since left the window), so it costs a full forward per token.
* With the cache, a stride in which some window re-starts begins with one re-prefill of the
  whole batch from its windows (left-padded again, into the same cache at position 0);
  without the cache, the same windows are what every step's forward sees. So the two paths
  condition on the same tokens at every step, for any length.
* The rule looks only at a row's own window and the step count, which every row shares, so a
  prompt's continuation does not depend on the prompts batched with it (up to floating-point
  rounding, and for sampling, the shared random stream), and a batch re-prefills at most
  once per stride, not once per row.

Stopping: a row ends at the end-of-text token (not part of the text), at the first occurrence
of any ``stop`` string (cut before it), or after ``max_new_tokens``; the batch ends when every
row has. Streaming sends each row's newly final text to ``stream(row, text)``: text that might
still turn into a stop string is held back, and so is a trailing U+FFFD, which is what half of a
multi-byte UTF-8 character split across tokens decodes to until its next token arrives. The
streamed pieces of a row join to exactly the text returned for it.

Randomness comes only from a ``torch.Generator`` seeded with ``seed``: the same seed, prompts
and settings give the same text.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Iterator, Sequence

import torch

from tinylm.data.tokenizer import Tokenizer
from tinylm.infer.decode_graph import graphed_decoder
from tinylm.model.gpt import GPT
from tinylm.model.kv_cache import KVCache

StreamCallback = Callable[[int, str], None]


@dataclass
class _Row:
    """One prompt's progress: generated ids, and the text already decoded and streamed."""

    ids: list[int] = field(default_factory=list)
    committed: str = ""  # decoded text of ids[:commit_at]; ends on a whole character
    commit_at: int = 0
    searched: int = 0  # text before this offset holds no stop string
    emitted: int = 0  # characters already streamed
    final: str | None = None  # set when the row is done


def _check_args(temperature: float, top_k: int | None, top_p: float | None,
                max_new_tokens: int, stop: Sequence[str] | None) -> None:
    if temperature < 0:
        raise ValueError(f"temperature={temperature}: expected >= 0 (0 = greedy)")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k={top_k}: expected >= 1")
    if top_p is not None and not 0.0 <= top_p <= 1.0:
        raise ValueError(f"top_p={top_p}: expected 0 <= top_p <= 1")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens}: expected >= 0")
    if stop is not None and any(not s for s in stop):
        raise ValueError("stop strings must not be empty")


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Next token ids (B,) from last-position logits (B, V).

    temperature 0 is greedy (argmax). Otherwise: scale by 1/temperature, keep the ``top_k``
    largest, then the smallest set of most likely tokens whose mass reaches ``top_p`` (always at
    least one, so top_p -> 0 is greedy; top_p = 1 is skipped, so it is exactly plain sampling),
    and draw one token per row with ``generator``. Tokens left with probability 0 are never
    drawn.
    """
    if logits.dtype != torch.float32:
        logits = logits.float()
    if temperature == 0:
        return logits.argmax(dim=-1)
    if temperature != 1.0:
        logits = logits / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        probs, order = torch.sort(torch.softmax(logits, dim=-1), dim=-1, descending=True, stable=True)
        mass_before = probs.cumsum(dim=-1) - probs
        drop_sorted = mass_before >= top_p
        drop_sorted[:, 0] = False  # the most likely token always stays
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    # One uniform per row against the cumulative distribution: the same law as
    # torch.multinomial, which was slower (docs/performance.md).
    cdf = torch.softmax(logits, dim=-1).cumsum(dim=-1)
    u = torch.rand(cdf.size(0), 1, generator=generator, device=cdf.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).clamp_max_(cdf.size(-1) - 1).squeeze(-1)


def _encode_prompts(tokenizer: Tokenizer, prompts: Sequence[str], keep: int,
                    block_size: int) -> list[list[int]]:
    """Token ids of each prompt, cropped from the left to ``keep`` tokens (with a warning). An
    empty prompt becomes one end-of-text token: "a new document starts here"."""
    encoded = []
    for i, prompt in enumerate(prompts):
        ids = tokenizer.encode(prompt) or [tokenizer.eot_id]
        if len(ids) > keep:
            warnings.warn(f"prompt {i} has {len(ids)} tokens, more than fit with room to generate "
                          f"in the model's context of {block_size}: cropped to its last {keep} "
                          "tokens", stacklevel=3)
            ids = ids[-keep:]
        encoded.append(ids)
    return encoded


def _windows(seq: torch.Tensor, length: int, starts: list[int], pad_id: int
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Each row's window ``seq[i, starts[i]:length]``, left-padded to the longest: (tokens,
    real) where ``real`` is None when no row is padded."""
    first = min(starts)
    if all(s == first for s in starts):
        return seq[:, first:length], None
    width = length - first
    tokens = torch.full((seq.size(0), width), pad_id, dtype=seq.dtype, device=seq.device)
    real = torch.zeros((seq.size(0), width), dtype=torch.bool, device=seq.device)
    for i, s in enumerate(starts):
        tokens[i, s - first:] = seq[i, s:length]
        real[i, s - first:] = True
    return tokens, real


def _window_forward(model: GPT, tokens: torch.Tensor, real: torch.Tensor | None,
                    cache: KVCache | None) -> torch.Tensor:
    """Last-position logits of a window of tokens (B, T); ``real`` False marks padding.

    With ``cache`` the window is prefilled into it from position 0. Without one, a padded
    window still needs the pad mask, which only a cache carries: a throwaway cache of the
    window's length serves (the uncached path pays for a full forward every step anyway).
    """
    if cache is None and real is not None:
        cache = KVCache(model.config, tokens.size(0), max_len=tokens.size(1),
                        device=tokens.device, dtype=model.lm_head.weight.dtype)
    if cache is not None:
        cache.pos = 0
        cache.pad_mask = None
        if real is not None:
            cache.pad_mask = torch.ones(tokens.size(0), cache.max_len, dtype=torch.bool,
                                        device=tokens.device)
            cache.pad_mask[:, :tokens.size(1)] = real
    return model(tokens, cache=cache, last_only=True)[:, -1]


def _update_text(row: _Row, tokenizer: Tokenizer, stop: Sequence[str]) -> tuple[str, int]:
    """Decode a row's new ids; return its text and how much of it is safe to stream.

    Whole characters are committed so each step decodes only the ids since the last commit.
    A stop string found ends the row (``row.final``).
    """
    tail = tokenizer.decode(row.ids[row.commit_at:])
    text = row.committed + tail
    if not tail.endswith("\ufffd"):  # ends on a whole character: later ids cannot change it
        row.committed, row.commit_at = text, len(row.ids)
    hits = [i for s in stop if (i := text.find(s, max(0, row.searched - len(s) + 1))) >= 0]
    if hits:
        row.final = text[:min(hits)]
        return row.final, len(row.final)
    safe = len(text.rstrip("\ufffd"))  # a trailing U+FFFD may be half a character
    row.searched = safe
    hold = max((n for s in stop for n in range(min(len(s) - 1, safe), 0, -1)
                if text[safe - n:safe] == s[:n]), default=0)  # may still become a stop string
    return text, safe - hold


def _take(i: int, row: _Row, tok: int, tokenizer: Tokenizer, stop: Sequence[str],
          stream: StreamCallback | None, stop_at_eot: bool) -> None:
    """Append a sampled token to a row that is still going; stream what became final."""
    if row.final is not None:
        return
    if tok == tokenizer.eot_id and stop_at_eot:
        row.final = tokenizer.decode(row.ids)
    else:
        row.ids.append(tok)
    if stream is None and not stop:
        return  # nobody needs the text before the end: decode once, then
    if row.final is None:
        text, safe = _update_text(row, tokenizer, stop)
    else:
        text, safe = row.final, len(row.final)
    if stream is not None and safe > row.emitted:
        stream(i, text[row.emitted:safe])
        row.emitted = safe


def _generator(seed: int | None, device: torch.device) -> torch.Generator:
    """The sampling generator: seeded by ``seed``, or from torch's global RNG when None (so it
    follows ``torch.manual_seed`` if the caller set one)."""
    if seed is None:
        seed = int(torch.randint(0, 2**62, ()))
    return torch.Generator(device=device).manual_seed(seed)


def _prompt_batch(model: GPT, tokenizer: Tokenizer, prompts: Sequence[str], keep: int,
                  max_new_tokens: int, device: torch.device) -> tuple[torch.Tensor, list[int], int]:
    """(seq, starts, P): the prompts' ids left-padded to P columns, with room for the new
    tokens; row i's window is seq[i, starts[i]:length]."""
    cfg = model.config
    if tokenizer.vocab_size != cfg.vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size "
                         f"is {cfg.vocab_size}: they do not belong together")
    encoded = _encode_prompts(tokenizer, prompts, keep, cfg.block_size)
    B, P = len(encoded), max(len(ids) for ids in encoded)
    seq = torch.full((B, P + max_new_tokens), tokenizer.eot_id, dtype=torch.long, device=device)
    for i, ids in enumerate(encoded):  # left padding; row i's tokens are seq[i, P - len:]
        seq[i, P - len(ids):P] = torch.tensor(ids, device=device)
    return seq, [P - len(ids) for ids in encoded], P


def generate(
    model: GPT,
    tokenizer: Tokenizer,
    prompts: Sequence[str],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    stop: Sequence[str] | None = None,
    use_cache: bool = True,
    stream: StreamCallback | None = None,
    stop_at_eot: bool = True,
    cuda_graph: bool = True,
    compile: bool = False,
) -> list[str]:
    """Continue each prompt; return the generated texts (prompts not included), in order.

    See the module docstring for the context, stopping and streaming rules. ``stop_at_eot=False``
    lets a row run past end-of-text (benchmarks want fixed lengths); the token then shows as
    ``<|endoftext|>`` in the text. On a CUDA device the cached one-token step is replayed as a
    CUDA graph (:mod:`tinylm.infer.decode_graph`); ``cuda_graph=False`` runs it eagerly. On a CPU,
    ``compile=True`` compiles that step (seconds, once per model and batch size in a
    process; worth it for long generations only). Either way the graph and its KV cache (a
    full context for the batch) stay allocated beside the model for the next call.
    """
    _check_args(temperature, top_k, top_p, max_new_tokens, stop)
    if not prompts:
        return []
    stop = list(stop or [])
    device = next(model.parameters()).device
    block = model.config.block_size
    span = max(1, block // 4)  # new tokens per stride (see the module docstring)
    keep = block - span + 1  # the longest window at the start of a stride
    generator = _generator(seed, device)
    seq, starts, P = _prompt_batch(model, tokenizer, prompts, keep, max_new_tokens, device)
    rows = [_Row() for _ in range(len(starts))]

    with _eval_mode(model), torch.inference_mode():  # no autograd bookkeeping: faster decoding
        cache, step_fn = _one_token_step(model, len(rows), use_cache, cuda_graph, compile)
        length, logits = P, None
        for step in range(max_new_tokens):
            if logits is None:  # first step, every step without a cache, or a re-start
                logits = _window_forward(model, *_windows(seq, length, starts, tokenizer.eot_id), cache)
            next_ids = sample_next(logits, temperature, top_k, top_p, generator)
            seq[:, length] = next_ids
            length += 1
            for i, tok in enumerate(next_ids.tolist()):
                _take(i, rows[i], tok, tokenizer, stop, stream, stop_at_eot)
            if all(r.final is not None for r in rows) or step == max_new_tokens - 1:
                break
            if (step + 1) % span == 0:  # a new stride: windows that could overflow re-start
                cut = [length - keep if length - s > keep else s for s in starts]
                if cut != starts:
                    starts, logits = cut, None
                    continue
            # one new token per row: the model's lean one-token path (no cache: a new window)
            logits = step_fn(seq[:, length - 1:length]) if use_cache else None
    return _finish(rows, tokenizer, stream)


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """``model`` in eval mode (no dropout) for the block, then back in the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _one_token_step(model: GPT, batch: int, use_cache: bool, cuda_graph: bool,
                    compile: bool) -> tuple[KVCache | None, Callable[[torch.Tensor], torch.Tensor]]:
    """The cache (None without one) and the one-token step: the kept graphed decoder on CUDA
    (unless ``cuda_graph=False``) and on a CPU with ``compile``, else ``GPT.decode_step``."""
    device = model.lm_head.weight.device
    if use_cache and (cuda_graph if device.type == "cuda" else compile):
        graphed = graphed_decoder(model, batch, compile=compile and device.type != "cuda")
        if graphed is not None:
            return graphed.cache, graphed.step
    cache = KVCache(model.config, batch, device=device, dtype=model.lm_head.weight.dtype) if use_cache else None
    return cache, partial(model.decode_step, cache=cache)


def _finish(rows: list[_Row], tokenizer: Tokenizer, stream: StreamCallback | None) -> list[str]:
    """Each row's final text (decoded once here when no stop or stream needed it sooner),
    streaming what was held back."""
    out = []
    for i, row in enumerate(rows):
        if row.final is None:
            row.final = tokenizer.decode(row.ids)
        if stream is not None and len(row.final) > row.emitted:
            stream(i, row.final[row.emitted:])
        out.append(row.final)
    return out
