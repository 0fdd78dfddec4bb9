"""A run's inputs: the prepared data, the training batches and the evaluators, for one
source (``data.source``) or a mixture (``data.mixture``, tinylm/data/mixture.py).

The main process prepares the tokenizer and token stores while the others wait. With a
mixture, train records carry ``tokens_by_source`` ({name: input tokens drawn so far, all
processes}) and eval records ``val_bits_per_byte_<name>`` for each source's own val split;
the aggregate ``val_loss`` / ``val_bits_per_byte`` the trainer uses (best/last eval, the
summary, hooks) is the byte-weighted total: all sources' nats over all their tokens and
bytes, as if their val splits were one. A checkpoint names the first source's store as
its validation split (``tinylm evaluate`` on a checkpoint scores that one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Union

import torch
from torch.utils.data import DataLoader

from tinylm.checkpoint.init_from import init_model_config
from tinylm.data.batches import EvalBlocks, TrainBatches
from tinylm.data.mixture import MixtureBatches, PreparedMixture, prepare_mixture
from tinylm.data.prepare import PreparedData, prepare
from tinylm.eval.loss import EvalResult, Evaluator
from tinylm.eval.suite import TaskEvaluator
from tinylm.model.config import GPTConfig


class MixtureEvaluator:
    """:class:`~tinylm.eval.loss.Evaluator`'s interface over one evaluator per source:
    ``run`` scores every source (periodic evals capped at ``eval.max_batches`` each) and
    returns their byte-weighted total; ``record`` adds each source's bits per byte."""

    def __init__(self, parts: list[tuple[str, Evaluator]], cfg) -> None:
        self.parts, self.cfg, self.last = parts, cfg, {}
        self.loader = _Batches([e.loader for _, e in parts])  # len(): all sources' batches

    def due(self, step: int, max_steps: int) -> bool:
        return self.parts[0][1].due(step, max_steps)

    def run(self, model: torch.nn.Module, final: bool = False,
            max_batches: int | None = None) -> EvalResult:
        self.last = {name: e.run(model, final=final, max_batches=max_batches)
                     for name, e in self.parts}
        return combined(list(self.last.values()))

    def record(self, step: int, result: EvalResult) -> dict:
        return {**Evaluator.record(step, result),
                **{f"val_bits_per_byte_{n}": r.bits_per_byte for n, r in self.last.items()}}


class _Batches:
    def __init__(self, loaders: list) -> None:
        self.loaders = loaders

    def __len__(self) -> int:
        return sum(len(x) for x in self.loaders)


def combined(results: list[EvalResult]) -> EvalResult:
    """The results of several splits as one: summed nats over summed tokens and bytes."""
    nats = sum(r.loss * r.tokens for r in results)
    tokens, nbytes = sum(r.tokens for r in results), sum(r.bytes for r in results)
    loss = nats / tokens
    return EvalResult(loss=loss, perplexity=math.exp(min(loss, 700.0)),
                      bits_per_byte=nats / (math.log(2) * nbytes), tokens=tokens, bytes=nbytes)


@dataclass
class Inputs:
    data: Union[PreparedData, PreparedMixture]
    batches: Union[TrainBatches, MixtureBatches]
    evaluator: Union[Evaluator, MixtureEvaluator]
    tasks: TaskEvaluator
    model_cfg: GPTConfig  # vocab_size from the tokenizer; init_from's architecture if given


def _evaluator(data: PreparedData, cfg, acc, T: int) -> Evaluator:
    loader = acc.prepare(DataLoader(EvalBlocks(data.split("val"), T),
                                    batch_size=cfg.eval.batch_size, shuffle=False))
    return Evaluator(loader, cfg.eval, data.meta, acc)


def build_inputs(cfg, acc) -> Inputs:
    """Prepare the data of ``cfg`` (a TrainConfig) and build the batches and evaluators."""
    mixture = bool(cfg.data.mixture)
    data = prepare_mixture(cfg.data, accelerator=acc) if mixture else \
        prepare(cfg.data, accelerator=acc)
    model_cfg = replace(cfg.model, vocab_size=data.meta["vocab_size"])
    if cfg.checkpoint.init_from:  # the weights fix the architecture; the tokenizer must match
        model_cfg = init_model_config(cfg.checkpoint.init_from, model_cfg.vocab_size)
    T, B = model_cfg.block_size, cfg.optim.batch_size
    ranks = {"rank": acc.process_index, "world_size": acc.num_processes, "seed": cfg.seed}
    if mixture:
        batches = MixtureBatches([(n, w, d.split("train")) for n, w, d in data.parts], T, B,
                                 **ranks)
        evaluator = MixtureEvaluator([(n, _evaluator(d, cfg, acc, T)) for n, _, d in data.parts],
                                     cfg.eval)
    else:
        batches = TrainBatches(data.split("train"), T, B, shuffle=cfg.data.shuffle, **ranks)
        evaluator = _evaluator(data, cfg, acc, T)
    tasks = TaskEvaluator(cfg.eval, data.tokenizer_path, acc, T, cfg.data.dir)
    return Inputs(data, batches, evaluator, tasks, model_cfg)


def source_tokens(batches) -> dict:
    """A train record's per-source token counts: ``{"tokens_by_source": {...}}`` for a mixture."""
    return {"tokens_by_source": batches.tokens_seen()} if isinstance(batches, MixtureBatches) else {}


def eval_split(data: Union[PreparedData, PreparedMixture]) -> dict:
    """What a checkpoint records of its validation split: the store (a mixture's first) and
    that split's tokens and bytes, as ``evaluate_checkpoint`` checks them."""
    first = data.parts[0][2] if isinstance(data, PreparedMixture) else data
    return {"data_dir": str(Path(first.dir).resolve()), "val_tokens": first.meta["val_tokens"],
            "val_bytes": first.meta["val_bytes"]}
