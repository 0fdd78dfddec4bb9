"""Downstream tasks and extra held-out sets, run on a checkpoint or inside a training run.

:func:`evaluate_tasks` scores a checkpoint (``tinylm evaluate CKPT --tasks ...``);
:class:`TaskEvaluator` does the same for the very module being trained, every
``eval.task_interval`` steps and at the end (``eval.tasks``, ``eval.extra_sources``), and
records the seconds it took, so a run can say what the tasks cost as a share of training.

In the loop the items are a subset of ``eval.task_limit`` rows per task fixed by
``eval.task_seed`` (the same items at every step, so the curve moves with the model, not the
sample) and are loaded once, before the first step. Nothing here draws from torch's or Python's
global RNG: a run with tasks on trains exactly as one with them off.

Extra held-out sets (``eval.extra_sources``, OLMo's perplexity suite): each is tokenized once
with the run's tokenizer exactly as ``tinylm evaluate --data`` does and scored over its whole
length; each gets its own ``bpb/<name>`` entry.

Under ``optim.max_time`` the end of the run reserves the last task evaluation's seconds for the
final one (none before the first). A model torch.compile wraps (``optim.compile`` under DDP)
is scored through its eager module (``_orig_mod``): task batches change shape every time, and
each new shape would cost a recompile. Blocks compiled in place (FSDP2) stay compiled; dynamo
then marks the shapes dynamic after its first recompile.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import DataLoader

from tinylm.checkpoint.load import load_for_inference
from tinylm.data.batches import EvalBlocks
from tinylm.data.tokenizer import Tokenizer
from tinylm.eval.loss import _tokenize_source, evaluate
from tinylm.eval.scoring import TaskResult, score_tasks
from tinylm.eval.tasks import Item, TaskError, TaskSpec, load_items, parse_task


def load_suite(tasks: list[str], *, limit: int | None = None, num_fewshot: int | None = None,
               seed: int = 1234, subset_seed: int | None = None,
               accelerator=None) -> list[tuple[TaskSpec, list[Item]]]:
    """Every task's spec checked (names, ``limit``) before any is loaded; then their items.
    With ``accelerator`` the main process fills the datasets cache first."""
    specs = [parse_task(t, num_fewshot) for t in tasks]
    if limit is not None and limit < 1:
        raise TaskError(f"limit={limit}: expected >= 1 (leave it out for every item)")
    first = accelerator.main_process_first() if accelerator is not None else contextlib.nullcontext()
    with first:
        return [(s, load_items(s, limit, seed=seed, subset_seed=subset_seed)) for s in specs]


def evaluate_tasks(ckpt: str | Path, tasks: list[str], *, limit: int | None = None,
                   num_fewshot: int | None = None, seed: int = 1234, batch_size: int = 32,
                   accelerator=None, device: str | torch.device | None = None) -> dict:
    """Scores of checkpoint ``ckpt`` on ``tasks`` (names or ``name=FILE``), as a dict with a
    ``tasks`` list (:meth:`TaskResult.to_dict`); every process returns the same."""
    suite = load_suite(tasks, limit=limit, num_fewshot=num_fewshot, seed=seed,
                       accelerator=accelerator)
    if device is None:
        device = accelerator.device if accelerator is not None else \
            ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer, cfg = load_for_inference(ckpt, device)
    results = score_tasks(model, tokenizer, suite, max_len=model.config.block_size,
                          batch_size=batch_size, accelerator=accelerator)
    return {"checkpoint": str(ckpt), "step": cfg.get("step"),
            "num_processes": accelerator.num_processes if accelerator is not None else 1,
            "tasks": [r.to_dict() for r in results]}


def headline(r: TaskResult, spec: TaskSpec) -> tuple[str, float, float | None]:
    """(metric, value, stderr) of the metric the field quotes for this task."""
    return spec.metric, r.metrics[spec.metric], r.stderr[spec.metric]


class TaskEvaluator:
    """Tasks and extra held-out sets inside a training run; off (and free) unless
    ``eval.tasks`` or ``eval.extra_sources`` is set."""

    def __init__(self, cfg, tokenizer_path: str | Path, accelerator, block_size: int,
                 data_dir: str) -> None:
        self.cfg, self.accelerator, self.block_size = cfg, accelerator, block_size
        self.active = bool(cfg.tasks or cfg.extra_sources)
        self.seconds, self.last_s, self.suite, self.extra = 0.0, 0.0, [], []
        if not self.active:
            return
        self.tokenizer = Tokenizer.load(tokenizer_path)
        self.suite = load_suite(list(cfg.tasks), limit=cfg.task_limit,
                                num_fewshot=cfg.task_fewshot, seed=cfg.task_seed,
                                subset_seed=cfg.task_seed, accelerator=accelerator)
        self._tmp = tempfile.TemporaryDirectory(prefix="tinylm-extra-")
        with accelerator.main_process_first():
            for i, source in enumerate(cfg.extra_sources):
                split = _tokenize_source(source, self.tokenizer, Path(self._tmp.name) / f"{i}.bin",
                                         data_dir)
                T = min(block_size, split.count - 1)
                loader = accelerator.prepare(DataLoader(EvalBlocks(split.tokens, T, dtype=split.dtype),
                                                        batch_size=cfg.batch_size))
                self.extra.append((Path(source).stem or source, loader, split))

    def due(self, step: int, max_steps: int) -> bool:
        i = self.cfg.task_interval
        return self.active and bool(i) and step % i == 0 and step < max_steps

    def run(self, model: torch.nn.Module, step: int) -> dict:
        """One record for metrics.jsonl: ``<task>/<metric>`` for every metric, ``bpb/<name>``
        for every extra set, and the seconds it took (``tasks_s``)."""
        t0 = time.perf_counter()
        model = getattr(model, "_orig_mod", model)  # compiled: eager, no recompile per batch shape
        record: dict = {"kind": "tasks", "step": step}
        if self.suite:
            results = score_tasks(model, self.tokenizer, self.suite, max_len=self.block_size,
                                  batch_size=self.cfg.batch_size, accelerator=self.accelerator)
            for (spec, _), r in zip(self.suite, results):
                record.update({f"{r.task}/{m}": v for m, v in r.metrics.items()})
                record[f"{r.task}/items"] = r.items
        for name, loader, split in self.extra:
            res = evaluate(model, loader, split_bytes=split.bytes, split_tokens=split.count,
                           accelerator=self.accelerator)
            record[f"bpb/{name}"] = res.bits_per_byte
        record["tasks_s"] = self.last_s = time.perf_counter() - t0  # a time budget reserves it
        self.seconds += record["tasks_s"]
        return record

    def maybe_run(self, model: torch.nn.Module, step: int, max_steps: int,
                  log: Callable[[dict], None], final: bool = False) -> None:
        """Score and ``log`` the record when due (every ``task_interval``; ``final``: always)."""
        if self.active and (final or self.due(step, max_steps)):
            log(self.run(model, step))

    def print_cost(self, train_seconds: float, print_line: Callable[[str], None]) -> None:
        """One line: the seconds the in-loop tasks took and their share of training time."""
        if self.active:
            share = 100 * self.seconds / max(train_seconds, 1e-9)
            print_line(f"in-loop tasks: {self.seconds:.1f} s, {share:.1f}% of training time")

    def headlines(self, record: dict) -> list[tuple[str, str, float]]:
        """(task, metric, value) of each task's headline metric in ``record``."""
        return [(s.name, s.metric, record[f"{s.name}/{s.metric}"]) for s, _ in self.suite]
