"""Evaluation: loss, perplexity and bits per byte over a split, on one or many processes.

Context policy: the split is cut into sequential, non-overlapping blocks of ``block_size``
tokens (``tinylm.data.EvalBlocks``), each scored on its own; every token after the first is
predicted exactly once. Cheaper than a sliding window and what nanoGPT reports; a token early in
a block sees little context, so numbers are slightly pessimistic versus a strided window.

Bits per byte = total nats / (ln 2 x UTF-8 bytes of the text evaluated): unlike loss per
token, it compares models with different tokenizers. When only part of a split is evaluated
(a capped periodic eval) the byte count is the split's bytes scaled by the fraction of its
tokens covered.

Several processes give the same numbers as one: sums (not means) of per-sequence nats and token
counts are gathered with ``gather_for_metrics``, which drops the samples accelerate repeats to
even out the last batch, and added up in float64.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F


@dataclass
class EvalResult:
    loss: float  # mean nats per predicted token
    perplexity: float
    bits_per_byte: float
    tokens: int  # tokens predicted (targets scored)
    bytes: float  # UTF-8 bytes those tokens stand for

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    loader,
    *,
    split_bytes: int,
    split_tokens: int,
    accelerator=None,
    max_batches: int = 0,
) -> EvalResult:
    """Score ``model`` on ``loader``'s (x, y) blocks; y = -100 marks padding.

    The model is put in eval mode and restored to its previous mode afterwards, so the very
    module being trained can be evaluated between steps. ``split_tokens`` is the number of
    tokens of the split; ``split_tokens - 1`` of them are predictable.
    """
    was_training = model.training
    model.eval()
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    nats = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.int64, device=device)
    try:
        for i, (x, y) in enumerate(loader):
            if max_batches and i >= max_batches:
                break
            x, y = x.to(device), y.to(device)
            if accelerator is not None:
                with accelerator.autocast():
                    logits = model(x)
            else:
                logits = model(x)
            per_token = F.cross_entropy(
                logits.float().view(-1, logits.size(-1)), y.reshape(-1),
                ignore_index=-100, reduction="none",
            ).view(y.shape)
            seq_nats = per_token.double().sum(dim=1)
            seq_count = (y != -100).sum(dim=1)
            if accelerator is not None:
                seq_nats, seq_count = accelerator.gather_for_metrics((seq_nats, seq_count))
            nats += seq_nats.sum()
            count += seq_count.sum()
    finally:
        model.train(was_training)
    tokens = int(count.item())
    if tokens == 0:
        raise ValueError("evaluation scored no tokens: the split is empty or max_batches is 0")
    total = nats.item()
    covered_bytes = split_bytes * tokens / max(split_tokens - 1, 1)
    loss = total / tokens
    return EvalResult(
        loss=loss,
        perplexity=math.exp(min(loss, 700.0)),
        bits_per_byte=total / (math.log(2) * covered_bytes),
        tokens=tokens,
        bytes=covered_bytes,
    )
