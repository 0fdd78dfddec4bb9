"""Scoring task items the way lm-eval-harness scores them, on one process or many.

A request is a (context, continuation) pair of strings, tokenized as lm-eval's causal models do
(``TemplateLM._encode_pair``): trailing spaces of the context move to the continuation, the
whole string is encoded and the continuation is what follows the context's tokens; an empty
context is the end-of-text token. The model sees ``(context + continuation)[-(T + 1):][:-1]``
(T = its context length) and the continuation's log-probabilities are summed; ``is_greedy``
says every continuation token was the argmax.

Metrics (lm-eval's ``process_results``): multiple choice ``acc`` = argmax of the summed
log-likelihoods is gold, ``acc_norm`` = the same after dividing each by its choice's length in
characters (lm-eval's ``len(choice)``), ``acc_bytes`` by its UTF-8 bytes; cloze ``acc`` =
is_greedy of the target, ``perplexity`` = exp(-mean log-likelihood). ``stderr`` of a mean is
the sample standard deviation over sqrt(n), as lm-eval's ``mean_stderr``.

Batch packing: requests are sorted longest first and cut into fixed batches of right-padded
rows (causal attention: padding after a row never changes it), so one forward scores
``batch_size`` requests. With several processes the batches (not the items) are dealt out
round-robin, and every process runs the same number of forwards (FSDP2 needs all ranks in each
one): each batch is computed with the same shapes whatever the process count, so 1 and N
processes give bit-identical numbers.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from accelerate.utils import gather_object

from tinylm.data.tokenizer import Tokenizer
from tinylm.eval.tasks import Item, TaskError, TaskSpec


def encode_pair(tokenizer: Tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids), split as lm-eval's causal ``_encode_pair``."""
    if context == "":
        cont = tokenizer.encode(continuation)
        eot = tokenizer.eot_id
        return ([eot], cont) if cont[0] != eot else (cont[:1], cont[1:])
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole, ctx = tokenizer.encode(context + continuation), tokenizer.encode(context)
    return ctx, whole[len(ctx):]


def _batch(rows: list[tuple[list[int], int]], device) -> tuple[torch.Tensor, list[int]]:
    width = max(len(r) for r, _ in rows)
    x = torch.zeros(len(rows), width, dtype=torch.long)
    for i, (r, _) in enumerate(rows):
        x[i, :len(r)] = torch.tensor(r)
    return x.to(device), [len(r) for r, _ in rows]


@torch.no_grad()
def _score_batch(model, rows, targets, device, autocast) -> list[tuple[float, bool]]:
    x, lengths = _batch(rows, device)
    with autocast:
        logits = model(x)
    out = []
    for i, ((_, n_cont), cont) in enumerate(zip(rows, targets)):
        n = lengths[i]  # log-softmax of the continuation's positions only: (B, T, V) never is
        lp = F.log_softmax(logits[i, n - n_cont:n].float(), dim=-1)
        t = torch.tensor(cont, device=lp.device)
        greedy = bool((lp.argmax(-1) == t).all())
        out.append((float(lp.gather(1, t[:, None]).sum()), greedy))
    return out


def loglikelihoods(model: torch.nn.Module, pairs: list[tuple[list[int], list[int]]], *,
                   max_len: int, batch_size: int = 32, accelerator=None
                   ) -> list[tuple[float, bool]]:
    """(summed log-probability, is_greedy) of each (context ids, continuation ids) pair, in
    order; with ``accelerator`` the batches are shared out and every process gets all results.
    The model is put in eval mode and restored, so the module being trained can be scored."""
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    world = accelerator.num_processes if accelerator is not None else 1
    rank = accelerator.process_index if accelerator is not None else 0
    too_long = [len(t) for _, t in pairs if len(t) > max_len]
    if too_long:  # lm-eval would score garbage positions; refuse instead
        raise ValueError(f"a continuation of {too_long[0]} tokens does not fit the model's "
                         f"context of {max_len}")
    inputs = [((c + t)[-(max_len + 1):][:-1], len(t)) for c, t in pairs]
    order = sorted(range(len(pairs)), key=lambda i: (-len(inputs[i][0]), i))
    batches = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    mine = batches[rank::world]
    rounds = math.ceil(len(batches) / world)  # the same forward count on every process
    was_training = model.training
    model.eval()
    local: list[tuple[int, float, bool]] = []
    try:
        for r in range(rounds):
            idx = mine[r] if r < len(mine) else batches[0]  # a filler forward, thrown away
            autocast = accelerator.autocast() if accelerator is not None else contextlib.nullcontext()
            scores = _score_batch(model, [inputs[i] for i in idx], [pairs[i][1] for i in idx],
                                  device, autocast)
            if r < len(mine):
                local += [(i, ll, g) for i, (ll, g) in zip(idx, scores)]
    finally:
        model.train(was_training)
    if world > 1:
        local = gather_object(local)
    results: list[tuple[float, bool] | None] = [None] * len(pairs)
    for i, ll, g in local:
        results[i] = (ll, g)
    return results  # type: ignore[return-value]


@dataclass
class TaskResult:
    task: str
    format: str
    num_fewshot: int
    items: int
    metrics: dict[str, float]
    stderr: dict[str, float | None]
    per_item: list[dict] = field(default_factory=list, repr=False)

    def to_dict(self, per_item: bool = False) -> dict:
        d = asdict(self)
        if not per_item:
            d.pop("per_item")
        return d


def _stderr(values: list[float]) -> float | None:
    """lm-eval's ``mean_stderr``: sample standard deviation / sqrt(n); None below 2 items."""
    if len(values) < 2:
        return None
    return float(np.std(values, ddof=1) / math.sqrt(len(values)))


def _item_metrics(item: Item, scores: list[tuple[float, bool]], fmt: str) -> dict:
    lls = np.array([s[0] for s in scores])
    if fmt == "cloze":
        return {"index": item.index, "ll": float(lls[0]), "acc": float(scores[0][1])}
    chars = np.array([float(len(c)) for c in item.choices])
    nbytes = np.array([float(len(c.encode("utf-8"))) for c in item.choices])
    return {"index": item.index, "lls": lls.tolist(), "gold": item.gold,
            "acc": float(np.argmax(lls) == item.gold),
            "acc_norm": float(np.argmax(lls / chars) == item.gold),
            "acc_bytes": float(np.argmax(lls / nbytes) == item.gold)}


def aggregate(spec: TaskSpec, per_item: list[dict]) -> TaskResult:
    """Means and their standard errors over the items (lm-eval's aggregation)."""
    names = ["acc"] if spec.format == "cloze" else ["acc", "acc_norm", "acc_bytes"]
    metrics = {m: float(np.mean([r[m] for r in per_item])) for m in names}
    stderr = {m: _stderr([r[m] for r in per_item]) for m in names}
    if spec.format == "cloze":  # lm-eval's perplexity aggregation: exp(-mean log-likelihood)
        metrics["perplexity"] = math.exp(min(-float(np.mean([r["ll"] for r in per_item])), 700.0))
        stderr["perplexity"] = None
    return TaskResult(spec.name, spec.format, spec.num_fewshot, len(per_item), metrics, stderr,
                      per_item)


def score_tasks(model: torch.nn.Module, tokenizer: Tokenizer,
                tasks: list[tuple[TaskSpec, list[Item]]], *, max_len: int,
                batch_size: int = 32, accelerator=None) -> list[TaskResult]:
    """Every task's items scored in one packed pass (short and long requests of all tasks
    share batches); one :class:`TaskResult` per task, the same on every process."""
    pairs, owners = [], []
    for t, (spec, items) in enumerate(tasks):
        for k, item in enumerate(items):
            for ctx, cont in zip(item.contexts, item.continuations):
                pairs.append(encode_pair(tokenizer, ctx, cont))
                if len(pairs[-1][1]) > max_len:
                    raise TaskError(f"task {spec.name}: item {item.index}: a continuation of "
                                    f"{len(pairs[-1][1])} tokens does not fit the model's "
                                    f"context of {max_len}")
                owners.append((t, k))
    scores = loglikelihoods(model, pairs, max_len=max_len, batch_size=batch_size,
                            accelerator=accelerator)
    grouped: dict[tuple[int, int], list] = {}
    for owner, s in zip(owners, scores):
        grouped.setdefault(owner, []).append(s)
    return [aggregate(spec, [_item_metrics(item, grouped[(t, k)], spec.format)
                             for k, item in enumerate(items)])
            for t, (spec, items) in enumerate(tasks)]
