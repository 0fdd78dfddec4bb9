"""Write a run's reference card, report.md, beside loss.png (see tinylm/eval/report.py).

    tinylm report RUN_DIR [--max-new-tokens N] [--seed S]

Redraws loss.png from metrics.jsonl (loss; task scores in a second panel when the run had
in-loop tasks), then writes report.md: config, machine, wall time, tokens, final bits per byte,
task scores, and sample generations of the newest checkpoint at a fixed seed.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser, name: str) -> None:
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("--max-new-tokens", type=int, default=64, help="per sample generation")
    p.add_argument("--seed", type=int, default=0, help="the samples' seed (fixed: comparable cards)")


def run(args: argparse.Namespace) -> int:
    from tinylm.eval.report import write_report
    from tinylm.train.metrics import plot_losses

    if not (args.run_dir / "metrics.jsonl").is_file():
        raise ValueError(f"{args.run_dir}: no metrics.jsonl: not a training run directory")
    plot_losses(args.run_dir / "metrics.jsonl", args.run_dir / "loss.png")
    print(f"wrote {write_report(args.run_dir, args.max_new_tokens, args.seed)}")
    return 0
