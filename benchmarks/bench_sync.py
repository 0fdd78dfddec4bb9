"""What the tied sync check costs, DDP vs FSDP2, in real 2-process runs of the trainer.

    python benchmarks/bench_sync.py [CONFIG] [--steps 60] [--every 10] [--text FILE]

Each strategy trains CONFIG (default: configs/default.yaml, the main job's shape) for --steps
steps on 2 gloo ranks, with the check every --every steps so one short run gives several
samples. The table: the check's median ms (from the trainer's "sync check @ step N: ... (X ms)"
lines), the median ms per step (from its tokens/s), and the check's share of the step time at
the config's own ``sync_check.interval`` (what a real run pays). Run it with nothing else on
the machine, and name the CPU (`lscpu`) beside the figures.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(strategy: str, args, work: Path) -> dict:
    run_dir = work / strategy
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(REPO / "configs" / "accelerate" / "cpu-2proc.yaml"), "--main_process_port",
           str(free_port()), str(REPO / "scripts" / "train.py"), args.config,
           f"run_dir={run_dir}", f"data.dir={work / 'data'}", f"optim.max_steps={args.steps}",
           f"sync_check.interval={args.every}", f"parallel.strategy={strategy}",
           "eval.interval=0", "eval.max_batches=1", "checkpoint.interval=0", "log.interval=5",
           "log.wandb=disabled", "log.plot=false", "optim.mixed_precision=no",
           *([f"data.source={args.text}"] if args.text else [])]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=1800)
    if proc.returncode != 0:
        sys.exit(f"{strategy} run failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    checks = [float(ms) for ms in re.findall(r"sync check @ step \d+: .* \(([\d.]+) ms\)", proc.stdout)]
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    tok_s = [r["tokens_per_s"] for r in records if r["kind"] == "train" and r["tokens_per_s"]]
    from tinylm.train.config import load_config

    cfg = load_config(args.config)
    tokens_per_step = 2 * cfg.optim.batch_size * cfg.model.block_size * cfg.optim.grad_accum
    return {"check_ms": statistics.median(checks[1:] or checks),  # the first one warms up
            "step_ms": 1000 * tokens_per_step / tok_s[-1], "interval": cfg.sync_check.interval,
            "samples": len(checks)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config", nargs="?", default="configs/default.yaml")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--every", type=int, default=10)
    p.add_argument("--text", default="")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = {s: run(s, args, Path(tmp)) for s in ("ddp", "fsdp2")}
    print(f"| strategy | sync check ms (median of {rows['ddp']['samples'] - 1}) | ms/step | "
          f"overhead at interval {rows['ddp']['interval']} |")
    print("|---|---|---|---|")
    for s, r in rows.items():
        print(f"| {s} | {r['check_ms']:.2f} | {r['step_ms']:.1f} | "
              f"{100 * r['check_ms'] / (r['interval'] * r['step_ms']):.4f}% |")


if __name__ == "__main__":
    main()
