"""Evaluate checkpoints: loss, perplexity and bits per byte.

    tinylm evaluate CKPT [CKPT ...] [--data PATH_OR_SOURCE] [--json OUT]
                    [--block-size N] [--batch-size N]
    accelerate launch --config_file configs/accelerate/cpu-2proc.yaml scripts/evaluate.py ...

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
    p.add_argument("checkpoints", nargs="+", metavar="CKPT")
    p.add_argument("--data", default=None, help="a source to score instead of the recorded val split")
    p.add_argument("--json", type=Path, default=None, metavar="OUT", help="write results here")
    p.add_argument("--block-size", type=int, default=None, help="default: the model's context")
    p.add_argument("--batch-size", type=int, default=16)


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
    from tinylm.train.rundir import require_writable

    if args.json is not None:  # before the evaluation, not after it
        require_writable(args.json.parent, "--json")

    datasets.disable_progress_bars()
    accelerator = make_accelerator()
    main = accelerator is None or accelerator.is_main_process
    args.quiet_errors = not main  # every process fails alike; one line is enough
    try:
        ckpts = [c for arg in args.checkpoints for c in find_checkpoints(arg)]
        results = [evaluate_checkpoint(c, args.data, block_size=args.block_size,
                                       batch_size=args.batch_size, accelerator=accelerator)
                   for c in ckpts]
    finally:
        if accelerator is not None:
            accelerator.end_training()  # releases the process group: no abort at exit
    if main:
        data = args.data or "the recorded val splits"
        n = 1 if accelerator is None else accelerator.num_processes
        print(f"evaluated {len(results)} checkpoint(s) on {data}, {n} process(es)")
        print(format_table(results))
        if args.json is not None:
            atomic_write(args.json, json.dumps(results, indent=2) + "\n")
    return 0
