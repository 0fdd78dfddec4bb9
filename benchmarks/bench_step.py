"""Training-step throughput of config variants, measured as ratios in ONE process.

    python benchmarks/bench_step.py CONFIG [--text FILE] [--variant NAME:key=v,key=v ...]

Where ``bench.py`` times whole runs (time to quality), this isolates the speed levers that do
not change what is learned per token: thread count, bf16 autocast, torch.compile, the AdamW
implementation, batch size — and prices the ones that do (vocab size, model shape) in text
bytes per second. Every variant is built with the trainer's own pieces (``load_config`` with
the overrides, ``GPT``, ``build_optimizer``, compile) and steps with the trainer's own
``tinylm.train.step.train_step`` on a ``LocalRuntime`` (accelerate's process-wide state allows one
precision per process; the variants need several), then the variants are timed in interleaved
rounds (A B C A B C ...) and the median round is reported: this machine's speed drifts by
10-20% over minutes, and interleaving cancels most of it.

With ``--text``, each vocab size gets a tokenizer trained on that text, which gives bytes per
token (so tokens/s becomes text bytes/s) and real batches from ``TrainBatches`` (whose time per
batch is reported as the data-loader overhead). Without it, batches are random ids and bytes
per token is 1.

Keys besides the config's: none. ``cpu_threads``, ``optim.mixed_precision``, ``optim.compile``,
``optim.adamw``, ``optim.name`` (adamw, muon), ``optim.batch_size``, ``data.vocab_size`` and
``model.*`` are the usual knobs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tinylm.data.batches import TrainBatches
from tinylm.data.prepare import DataConfig, prepare  # noqa: E402
from tinylm.model.gpt import GPT  # noqa: E402
from tinylm.train.config import load_config  # noqa: E402
from tinylm.train.optim import build_optimizers  # noqa: E402
from tinylm.train.step import LocalRuntime, choose_precision, train_step  # noqa: E402


class Variant:
    """One config variant, built and warmed up, ready to time a few steps at a time."""

    def __init__(self, name: str, config: str, overrides: list[str], text: str | None, work: Path):
        self.name, self.overrides = name, " ".join(overrides) or "(config as is)"
        cfg = load_config(config, overrides)
        self.threads = cfg.cpu_threads or os.cpu_count() or 1
        torch.set_num_threads(self.threads)
        o, T = cfg.optim, cfg.model.block_size
        self.tokens_per_step = o.batch_size * T * o.grad_accum
        self.bytes_per_token, self.batches = 1.0, None
        if text:
            data = _prepare(text, cfg.data.vocab_size, work)
            meta = data.meta
            self.bytes_per_token = meta["train_bytes"] / meta["train_tokens"]
            self.batches = TrainBatches(data.split("train"), T, o.batch_size)
            vocab = meta["vocab_size"]
        else:
            vocab = cfg.data.vocab_size
        torch.manual_seed(0)
        self.model = GPT(replace(cfg.model, vocab_size=vocab))  # the model pads its own matrix
        self.optimizer = build_optimizers(self.model, o)
        self.forward = torch.compile(self.model) if o.compile else self.model
        precision, _ = choose_precision(o.mixed_precision, self.model.config, o, 1)  # as the trainer
        self.runtime = LocalRuntime("cpu", precision, o.grad_accum)
        self.precision = self.runtime.mixed_precision
        self.random_batch = (torch.randint(0, vocab, (o.batch_size, T)),
                             torch.randint(0, vocab, (o.batch_size, T)))
        self.optim_cfg, self.steps_done = o, 0
        t0 = time.perf_counter()
        self.step()  # compiles, if asked
        self.first_step_s = time.perf_counter() - t0
        for _ in range(2):
            self.step()
        self.step_ms: list[float] = []
        self.batch_ms = self._time_batches()

    def _batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        return next(self.batches) if self.batches is not None else self.random_batch

    def _time_batches(self, n: int = 50) -> float:
        if self.batches is None:
            return 0.0
        t0 = time.perf_counter()
        for _ in range(n):
            next(self.batches)
        return 1000 * (time.perf_counter() - t0) / n

    def step(self) -> None:
        """One training step: the trainer's own ``train_step``."""
        batches = iter(self._batch, None)  # an endless iterator over this variant's batches
        train_step(self.forward, self.optimizer, batches, self.runtime, self.optim_cfg,
                   self.steps_done)
        self.steps_done += 1

    def time_round(self, steps: int) -> None:
        torch.set_num_threads(self.threads)
        t0 = time.perf_counter()
        for _ in range(steps):
            self.step()
        self.step_ms.append(1000 * (time.perf_counter() - t0) / steps)

    def row(self) -> dict:
        ms = statistics.median(self.step_ms)
        tok_s = self.tokens_per_step / ms * 1000
        return {"name": self.name, "overrides": self.overrides, "threads": self.threads,
                "precision": self.precision, "step_ms": ms,
                "spread_pct": 100 * (max(self.step_ms) - min(self.step_ms)) / ms,
                "tokens_s": tok_s, "bytes_per_token": self.bytes_per_token,
                "bytes_s": tok_s * self.bytes_per_token, "first_step_s": self.first_step_s,
                "batch_ms": self.batch_ms}


_PREPARED: dict[int, object] = {}


def _prepare(text: str, vocab: int, work: Path):
    """One tokenizer and token file per vocab size, shared by the variants that use it."""
    if vocab not in _PREPARED:
        _PREPARED[vocab] = prepare(DataConfig(source=text, vocab_size=vocab, val_fraction=0.1,
                                              dir=str(work / f"data-{vocab}")), progress=False)
    return _PREPARED[vocab]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("--text", help="text file: real batches and bytes/token per vocab size")
    p.add_argument("--variant", action="append", default=[], help="NAME:key=v,key=v (vs the base)")
    p.add_argument("--steps", type=int, default=5, help="steps per timed round")
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds; the median is reported")
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args()
    specs = [("base", [])] + [(v.split(":", 1)[0], v.split(":", 1)[1].split(",")) for v in args.variant]
    os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="bench-step-hf-"))
    work = Path(tempfile.mkdtemp(prefix="bench-step-"))
    variants = [Variant(name, args.config, ov, args.text, work) for name, ov in specs]
    for r in range(args.rounds):
        for v in variants:
            v.time_round(args.steps)
        print(f"round {r + 1}/{args.rounds}", file=sys.stderr, flush=True)
    rows = [v.row() for v in variants]
    base = rows[0]
    print(f"\nconfig {args.config}, text {args.text or '(random ids)'}, torch {torch.__version__}, "
          f"{args.rounds} rounds x {args.steps} steps, median round\n")
    print("| variant | overrides | threads | precision | ms/step (spread) | tok/s | bytes/tok | "
          "bytes/s | x base | first step s | batch ms |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['overrides']} | {r['threads']} | {r['precision']} | "
              f"{r['step_ms']:.1f} ({r['spread_pct']:.0f}%) | {r['tokens_s']:.0f} | "
              f"{r['bytes_per_token']:.2f} | {r['bytes_s']:.0f} | {r['bytes_s'] / base['bytes_s']:.2f} | "
              f"{r['first_step_s']:.1f} | {r['batch_ms']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
