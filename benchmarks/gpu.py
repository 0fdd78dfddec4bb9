"""The GPU check: gpt2-small through the real trainer, as one table (284 s on an H200, 2026-11-27).

    python benchmarks/gpu.py [--steps 60] [--json OUT]       # on a GPU machine
    python benchmarks/gpu.py --dry-run [--text FILE]         # the same code path, tiny, on CPU

Rows, each from a real `accelerate launch scripts/train.py configs/gpt2-small.yaml` with one
process (bf16 autocast + torch.compile, as the preset says), on the built-in corpus (the text
does not change the speed; nothing is downloaded):

- base: the preset at ``optim.grad_accum=1`` (a step is one micro-batch, so a few dozen steps
  reach steady state); tokens/s and ms/step from metrics.jsonl after the first steps
  (compilation), peak GPU memory, MFU = tokens/s x flops_per_token / the card's dense bf16 peak
  (``tinylm.train.hardware``; an unknown card and every CPU get no MFU);
- variants as ratios to base, in the same invocation, in this order (what a short lease
  must not miss first): ``parallel.strategy=fsdp2`` (one process: tinylm's own fully_shard
  on a 1-GPU mesh; its cost over DDP's plain module, and its sync check), compile off,
  ``optim.adamw=foreach`` instead of fused, a batch twice the preset's, activation
  checkpointing (peak memory against step time);
- a run that fails is a row saying why (exit code, last stderr line), not the end of the
  table; each run prints a progress line as it ends, so a cut-off call still reports;
- generate: the base run's final checkpoint, batch 1 and 8, KV cache, tokens/s, the eager
  one-token step and (CUDA) the same step replayed as a CUDA graph, with its greedy text
  checked equal to eager's;
- sync check: its ms (from the trainer's log lines) against the step time at the preset's
  ``sync_check.interval``.

--dry-run shrinks the model and the steps and runs on CPU without compile, so CI can keep this
script working between the times a GPU is at hand. The GPU machine lacks datasets, omegaconf
and their dependencies: see benchmarks/gpu_wheels.sh.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
PRESET = "gpt2-small"
TINY = ["model.n_layer=2", "model.n_head=2", "model.n_embd=64", "model.block_size=64",
        "data.vocab_size=512", "optim.batch_size=4", "optim.compile=false",
        "optim.mixed_precision=no"]  # --dry-run: seconds on a CPU
COLUMNS = ["row", "setting", "tokens/s", "ms/step", "x base", "peak GiB", "MFU", "note"]


def launch(name: str, overrides: list[str], args, work: Path) -> dict:
    """One training run under accelerate; its steady-state numbers from metrics.jsonl."""
    run_dir = work / name
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1",
           "--num_machines", "1", "--dynamo_backend", "no",
           "--mixed_precision", "no" if args.dry_run else "bf16",
           *(["--cpu", "--num_cpu_threads_per_process", "1"] if args.dry_run else []),
           str(REPO / "scripts" / "train.py"), PRESET,
           f"run_dir={run_dir}", f"data.dir={work / 'data'}", f"optim.max_steps={args.steps}",
           "optim.grad_accum=1", "eval.interval=0", "eval.max_batches=1", "checkpoint.interval=0",
           f"log.interval={args.log_interval}", "log.wandb=disabled", "log.plot=false",
           *args.base_overrides, *overrides]
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return failed(name, f"no exit within --timeout {args.timeout} s")
    if proc.returncode != 0:
        print(f"run {name} failed ({' '.join(overrides) or 'base'}):\n{proc.stderr[-3000:]}",
              file=sys.stderr, flush=True)
        lines = [x for x in proc.stderr.splitlines() if x.strip()]
        return failed(name, f"exit {proc.returncode}: {lines[-1][:160] if lines else '?'}")
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    warm = train[len(train) // 4:] if len(train) >= 4 else train  # past compilation
    first, last = warm[0], warm[-1]
    seconds = last["time"] - first["time"]
    # the preset's interval: only the first step is checked in a run this short, and no
    # check perturbs the steady-state window
    checks = [float(ms) for ms in re.findall(r"sync check @ step \d+: .*\(([\d.]+) ms\)",
                                             proc.stdout)]
    return {"tokens_s": (last["tokens"] - first["tokens"]) / seconds,
            "ms_step": 1000 * seconds / (last["step"] - first["step"]),
            "peak_gib": last.get("peak_mem_gib"), "wall_s": time.time() - t0,
            "sync_ms": statistics.median(checks) if checks else None,
            "checkpoint": sorted((run_dir / "checkpoints").glob("step-*"))[-1]}


def failed(name: str, why: str) -> dict:
    """A run that broke is a row saying so: one variant's failure must not cost the others'
    figures (a GPU is lent for minutes, and the whole table is one device call)."""
    print(f"run {name}: FAILED: {why}", flush=True)
    return {"failed": why}


def flops_per_token(ckpt: Path) -> float:
    from tinylm.checkpoint.format import model_config
    from tinylm.model.gpt import GPT

    cfg = model_config(ckpt)
    with torch.device("meta"):  # the count needs shapes, not memory
        return GPT(cfg).flops_per_token(cfg.block_size)


def generation(ckpt: Path, device: str) -> list[dict]:
    """Rows of tokens/s at batch 1 and 8, KV cache, 100 new tokens per row, after a warm-up:
    the eager one-token step, and on CUDA also the step replayed as a CUDA graph (its ratio to
    eager, and whether its greedy text equals eager's on this checkpoint)."""
    from tinylm.checkpoint.load import load_for_inference
    from tinylm.infer.generate import generate

    model, tok, _ = load_for_inference(ckpt, device)
    rows = []
    for batch in (1, 8):
        prompts = [f"The {w} of" for w in ("use", "name", "value", "end", "form", "list",
                                           "type", "call")][:batch]
        eager = None
        for graph in ((False, True) if device == "cuda" else (False,)):
            generate(model, tok, prompts, 8, seed=0, cuda_graph=graph)  # warm-up
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            generate(model, tok, prompts, 100, temperature=1.0, seed=0, stop_at_eot=False,
                     cuda_graph=graph)
            if device == "cuda":
                torch.cuda.synchronize()
            tok_s = 100 * batch / (time.perf_counter() - t0)
            note = "100 new tokens per row" + ("; graph captured in the warm-up call" if graph else "")
            if graph:
                same = generate(model, tok, prompts, 100, temperature=0, cuda_graph=True) == \
                    generate(model, tok, prompts, 100, temperature=0, cuda_graph=False)
                note += f"; greedy text {'equals' if same else 'DIFFERS FROM'} eager's"
            rows.append({"row": "generate",
                         "setting": f"batch {batch}, KV cache, {'CUDA graph' if graph else 'eager'}",
                         "tokens/s": tok_s, "ms/step": 1000 * batch / tok_s,
                         "x base": tok_s / eager if graph else None, "peak GiB": None,
                         "MFU": None, "note": note})
            eager = eager or tok_s
    return rows


def table(args, work: Path) -> list[dict]:
    from tinylm.train.config import load_config
    from tinylm.train.hardware import mfu

    preset = load_config(PRESET, args.base_overrides)
    device = "cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"
    card = torch.cuda.get_device_name() if device == "cuda" else None
    # the order they run in: what a short lease must not miss comes first
    variants = [("base", []), ("fsdp2", ["parallel.strategy=fsdp2"]),
                ("no compile", ["optim.compile=false"]),
                ("foreach AdamW", ["optim.adamw=foreach"]),
                (f"batch {2 * preset.optim.batch_size}", [f"optim.batch_size={2 * preset.optim.batch_size}"]),
                ("activation checkpointing", ["model.activation_checkpointing=true"])]
    if args.dry_run:  # compiling even a tiny model takes longer than the whole dry run
        variants = [v for v in variants if v[0] != "no compile"]
    if args.only:
        variants = [v for v in variants if v[0] == "base" or v[0] in args.only]
    runs = {}
    for name, ov in variants:
        runs[name] = r = launch(name.replace(" ", "-"), ov, args, work)
        if "failed" not in r:
            print(f"run {name}: {r['tokens_s']:,.0f} tokens/s, {r['ms_step']:.1f} ms/step, "
                  f"peak {r['peak_gib']} GiB, {r['wall_s']:.0f} s", flush=True)
    base = runs["base"]
    fpt = flops_per_token(base["checkpoint"]) if "failed" not in base else None
    rows = []
    for (name, ov), r in zip(variants, runs.values()):
        setting = name if not ov else " ".join(ov)
        if "failed" in r:
            rows.append({"row": "train", "setting": setting, "tokens/s": None, "ms/step": None,
                         "x base": None, "peak GiB": None, "MFU": None,
                         "note": f"FAILED: {r['failed']}"})
            continue
        rows.append({"row": "train", "setting": setting,
                     "tokens/s": r["tokens_s"], "ms/step": r["ms_step"],
                     "x base": r["tokens_s"] / base["tokens_s"] if fpt else None,
                     "peak GiB": r["peak_gib"], "MFU": mfu(r["tokens_s"], fpt, card) if fpt else None,
                     "note": f"launch to exit {r['wall_s']:.0f} s"})
    if "failed" not in base:
        rows += generation(base["checkpoint"], device)
    interval = preset.sync_check.interval
    for name in ("base", "fsdp2"):
        r = runs.get(name, {"failed": "not run"})
        if "failed" in r:
            continue
        overhead = 100 * r["sync_ms"] / (interval * r["ms_step"]) if r["sync_ms"] else None
        rows.append({"row": "sync check", "setting": f"{name}, every {interval} steps (preset)",
                     "tokens/s": None, "ms/step": r["sync_ms"], "x base": None, "peak GiB": None,
                     "MFU": None, "overhead_pct": overhead,
                     "note": "overhead " + ("-" if overhead is None else f"{overhead:.4f}%")})
    return rows


def fmt(value, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true", help="tiny shape on CPU, seconds")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per run (150; dry 12)")
    p.add_argument("--text", default=None, help="a local text instead of python-docs")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    p.add_argument("--timeout", type=int, default=900, help="seconds per training run")
    p.add_argument("--keep", action="store_true", help="keep the runs' temp dir (GBs on a GPU)")
    p.add_argument("--only", type=lambda x: x.split(","), default=None,
                   help="comma-separated variants to run beside base (e.g. 'fsdp2,no compile'); "
                        "'' for base alone (a short lease)")
    args = p.parse_args()
    args.steps = args.steps if args.steps is not None else (12 if args.dry_run else 150)
    args.log_interval = 3 if args.dry_run else 10
    if args.steps < 4 * args.log_interval:  # the steady-state window needs 3 logged records
        p.error(f"--steps {args.steps}: expected >= {4 * args.log_interval}")
    args.base_overrides = (TINY if args.dry_run else []) + ([f"data.source={args.text}"] if args.text else [])
    if not args.dry_run and not torch.cuda.is_available():
        print("error: no CUDA device; run with --dry-run to check the script on CPU", file=sys.stderr)
        sys.exit(2)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    work = Path(tempfile.mkdtemp(prefix="tinylm-gpu-"))
    card = torch.cuda.get_device_name() if torch.cuda.is_available() and not args.dry_run else "CPU (dry run)"
    try:
        rows = table(args, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\n{card}, torch {torch.__version__}, {date.today()}, {PRESET} "
          f"({'dry run, tiny shape' if args.dry_run else 'bf16 + torch.compile'}), "
          f"{args.steps} steps per run; `python benchmarks/gpu.py{' --dry-run' if args.dry_run else ''}`\n")
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for r in rows:
        print(f"| {r['row']} | {r['setting']} | {fmt(r['tokens/s'], ',.0f')} | "
              f"{fmt(r['ms/step'], '.1f')} | {fmt(r['x base'], '.2f')} | "
              f"{fmt(r['peak GiB'], '.1f')} | {fmt(r['MFU'] and 100 * r['MFU'], '.1f')}"
              f"{'%' if r['MFU'] is not None else ''} | {r['note']} |")
    if args.json:
        args.json.write_text(json.dumps({"card": card, "rows": rows}, indent=2, default=str))


if __name__ == "__main__":
    main()
