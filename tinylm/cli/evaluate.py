"""Evaluate checkpoints: loss, perplexity and bits per byte; downstream tasks; lm-eval.

    tinylm evaluate CKPT [CKPT ...] [--data PATH_OR_SOURCE] [--json OUT]
                    [--block-size N] [--batch-size N]
    tinylm evaluate CKPT --tasks hellaswag,arc_easy[=FILE] [--limit N] [--num-fewshot K]
    tinylm evaluate CKPT --harness hellaswag,arc_easy [--limit N]   (pip install tinylm[eval])
    accelerate launch --config_file configs/accelerate/cpu-2proc.yaml scripts/evaluate.py ...

--tasks scores tinylm's task specs (hellaswag, arc_easy, arc_challenge, piqa, winogrande,
lambada_openai; ``name=FILE`` reads a local jsonl/parquet file in the Hub schema) the way
lm-eval does, one table row per task (its headline metric, value, stderr, items; --json has
every metric), the items shared out over the processes under accelerate. --harness runs
lm-eval-harness itself on the checkpoint in memory, any of its tasks, one process.

CKPT is a checkpoint directory (step-<N>/), a packed artifact (tinylm pack), or a run
directory or its checkpoints/ folder, which means all of its checkpoints, oldest first. Without --data each checkpoint is scored on
the validation split its config.json records; with it, on that source (a text file, folder,
glob or python-docs) tokenized with the checkpoint's own tokenizer. Prints a table; --json
writes a list with one object per checkpoint (atomically). Under accelerate the blocks are
shared out over the processes and only the main process prints and writes.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser, name: str) -> None:
    p.set_defaults(exit_rank=True)  # several ranks: end without finalization (train/rundir.py)
    p.add_argument("checkpoints", nargs="+", metavar="CKPT")
    p.add_argument("--data", default=None, help="a source to score instead of the recorded val split")
    p.add_argument("--json", type=Path, default=None, metavar="OUT", help="write results here")
    p.add_argument("--block-size", type=int, default=None, help="default: the model's context")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--tasks", default=None, metavar="T1,T2", help="downstream tasks (name or name=FILE)")
    p.add_argument("--harness", default=None, metavar="T1,T2", help="lm-eval-harness tasks, in memory")
    p.add_argument("--limit", type=int, default=None, help="first N items per task (default: all)")
    p.add_argument("--num-fewshot", type=int, default=None, help="shots per item (default: the spec's)")
    p.add_argument("--seed", type=int, default=1234, help="which shots (lm-eval's fewshot seed)")


def format_table(results: list[dict]) -> str:
    """A fixed-width console table; the checkpoint column as wide as its longest name."""
    head = ("checkpoint", "step", "loss", "ppl", "bits/byte", "tokens")
    rows = [(r["checkpoint"], str(r["step"]), f"{r['loss']:.4f}", f"{r['perplexity']:.2f}",
             f"{r['bits_per_byte']:.4f}", f"{r['tokens']:,}") for r in results]
    line = "{:<%d}  {:>6}  {:>8}  {:>10}  {:>9}  {:>12}"
    if any("artifact_bytes" in r for r in results):  # a packed file: its exact size beside it
        head, line = (*head, "bytes"), line + "  {:>12}"
        rows = [(*row, f"{r['artifact_bytes']:,}" if "artifact_bytes" in r else "-")
                for row, r in zip(rows, results)]
    width = max(len(r[0]) for r in [head, *rows])
    return "\n".join([(line % width).format(*r) for r in [head, *rows]])


def format_task_table(results: list[dict]) -> str:
    """One row per (checkpoint, task): the task's headline metric, its stderr and items."""
    from tinylm.eval.tasks import TASKS

    head = ("checkpoint", "step", "task", "shots", "metric", "value", "stderr", "items")
    rows = []
    for r in results:
        for t in r["tasks"]:
            m = TASKS[t["task"]].metric
            se = t["stderr"][m]
            rows.append((r["checkpoint"], str(r["step"]), t["task"], str(t["num_fewshot"]), m,
                         f"{t['metrics'][m]:.4f}", "-" if se is None else f"{se:.4f}",
                         str(t["items"])))
    width = max(len(r[0]) for r in [head, *rows])
    line = "{:<%d}  {:>6}  {:<14}  {:>5}  {:<8}  {:>7}  {:>7}  {:>6}" % width
    return "\n".join([line.format(*head), *(line.format(*r) for r in rows)])


def make_accelerator():
    """An Accelerator when launched as several processes (accelerate launch, torchrun), else
    None: a plain run needs no process group, and skips accelerate's start-up."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch
    from accelerate import Accelerator

    # cpu=True without CUDA: with a MULTI_GPU launch config that gives real gloo ranks
    # (see configs/accelerate/cpu-2proc.yaml) instead of N independent processes.
    return Accelerator(cpu=not torch.cuda.is_available())


def run(args: argparse.Namespace) -> int:
    import datasets

    from tinylm.checkpoint.format import find_checkpoints
    from tinylm.common.atomic import atomic_write
    from tinylm.eval.loss import evaluate_checkpoint
    from tinylm.eval.suite import evaluate_tasks
    from tinylm.train.rundir import require_writable

    if args.json is not None:  # before the evaluation, not after it
        require_writable(args.json.parent, "--json")

    datasets.disable_progress_bars()
    if args.harness:
        return run_harness(args)
    accelerator = make_accelerator()
    main = accelerator is None or accelerator.is_main_process
    args.quiet_errors = not main  # every process fails alike; one line is enough
    try:
        ckpts = [c for arg in args.checkpoints for c in find_checkpoints(arg)]
        if args.tasks:
            results = [evaluate_tasks(c, args.tasks.split(","), limit=args.limit,
                                      num_fewshot=args.num_fewshot, seed=args.seed,
                                      batch_size=args.batch_size, accelerator=accelerator)
                       for c in ckpts]
        else:
            results = [evaluate_checkpoint(c, args.data, block_size=args.block_size,
                                           batch_size=args.batch_size, accelerator=accelerator)
                       for c in ckpts]
    finally:
        if accelerator is not None:
            accelerator.end_training()  # releases the process group: no abort at exit
    if main:
        data = f"tasks {args.tasks}" if args.tasks else args.data or "the recorded val splits"
        n = 1 if accelerator is None else accelerator.num_processes
        print(f"evaluated {len(results)} checkpoint(s) on {data}, {n} process(es)")
        print(format_task_table(results) if args.tasks else format_table(results))
        if args.json is not None:
            atomic_write(args.json, json.dumps(results, indent=2) + "\n")
    return 0


def run_harness(args: argparse.Namespace) -> int:
    """lm-eval-harness's own tasks on each checkpoint in memory (one process)."""
    import tempfile

    from tinylm.checkpoint.format import find_checkpoints
    from tinylm.common.atomic import atomic_write

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("--harness runs in one process (lm-eval's own multi-process mode "
                         "is for HF models); launch it without accelerate")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit={args.limit}: expected >= 1 (leave it out for every item)")
    try:
        from lm_eval.utils import make_table  # the optional extra: pip install tinylm[eval]
    except ImportError:
        raise ValueError("--harness needs lm-eval: pip install 'tinylm[eval]'") from None
    from tinylm.eval.harness import harness_on_checkpoint

    out = []
    for ckpt in [c for arg in args.checkpoints for c in find_checkpoints(arg)]:
        with tempfile.TemporaryDirectory(prefix="tinylm-harness-") as tmp:
            res = harness_on_checkpoint(ckpt, args.harness.split(","), work_dir=Path(tmp),
                                        limit=args.limit, num_fewshot=args.num_fewshot,
                                        batch_size=args.batch_size)
        print(f"lm-eval-harness on {ckpt} (in memory)")
        print(make_table(res))
        out.append({"checkpoint": str(ckpt), "results": res["results"],
                    "n-shot": res.get("n-shot"), "versions": res.get("versions")})
    if args.json is not None:
        atomic_write(args.json, json.dumps(out, indent=2, default=str) + "\n")
    return 0
