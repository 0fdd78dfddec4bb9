"""L(N) on this machine: the lowest bits per byte at a fixed artifact size and wall budget.

    python benchmarks/bench_golf.py TEXT [TEXT ...] [--budget 90] [--only NAME ...]

Parameter Golf's rules, scaled to 2 CPU cores: every variant trains `configs/golf-cpu.yaml`
on TEXT for the same wall budget (``optim.max_time``, launch to final checkpoint), then is
packed (`tinylm pack`) at int8 and int6 and scored on the validation split AFTER the round
trip, with the artifact's exact bytes beside the score. The variants hold (about) the same
unique parameters, so the same bytes:

- ``baseline``: the challenge's naive layout scaled (9 blocks, tied, vocab 1024, 2:1 GQA);
- ``recur``: the records' depth recurrence, the same 9 blocks with blocks 4-5 run twice (11
  depths: the same bytes, 22% more compute per token);
- ``loop3x3``: 3 unique blocks cycled 3 times (ALBERT / Universal Transformer), wider to
  spend the same bytes;
- ``repeat2``: MobileLLM's immediate block-wise sharing, 5 blocks each run twice, wider too;
- ``baseline_qat``: the baseline trained through int6 round trips for its last 15%
  (``optim.qat_from=0.85``), as the golf records do;
- ``wide_int6``: the baseline widened to 4/3 of its parameters, so that at int6 it spends the
  bytes the baseline spends at int8: int8 against int6 at equal bytes.

``--steps N`` trains every variant for N steps instead of the wall budget: the same tokens,
so a looped model's extra compute is paid in time instead of in tokens (what sharing buys at
a fixed size, apart from what it costs at a fixed time).

A looped model pays compute per token: in a fixed time it sees fewer tokens, so what it wins
at a fixed size it may lose at a fixed time; the table shows both (tokens/s, steps). The
data is prepared once before the variants, so no variant's budget pays for it. Each run
is a fresh ``python scripts/train.py`` process; nothing else should run beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PRESET = "golf-cpu"
VARIANTS = {  # name -> (what it is, overrides; n_embd "fit" = the width that matches the bytes)
    "baseline": ("9 blocks, one per depth", {}),
    "recur": ("9 blocks, 4-5 twice (11 depths)",
              {"model.n_layer": 11, "model.layer_map": "[0,1,2,3,4,5,4,5,6,7,8]"}),
    "loop3x3": ("3 blocks x 3 (cycle:3)", {"model.layer_map": "cycle:3", "model.n_embd": "fit"}),
    "repeat2": ("5 blocks, each twice (repeat:2)",
                {"model.n_layer": 10, "model.layer_map": "repeat:2", "model.n_embd": "fit"}),
    "baseline_qat": ("the baseline, QAT int6 from 85%", {"optim.qat_from": 0.85}),
    "wide_int6": ("the baseline widened to spend int8's bytes at int6", {"model.n_embd": "fit4/3"}),
}


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return platform.processor() or "unknown CPU"
    lines = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = [f for f in ("amx_bf16", "avx512_bf16", "avx512f", "avx2") if f in lines.get("Flags", "")]
    return f"{lines.get('Model name', '?').strip()} ({', '.join(flags[:2]) or 'no AVX-512'})"


def model_config(overrides: dict):
    """The preset's GPTConfig with ``overrides`` (vocab as the preset's tokenizer size)."""
    from tinylm import load_config

    cfg = load_config(PRESET, [f"{k}={v}" for k, v in overrides.items()])
    return replace(cfg.model, vocab_size=cfg.data.vocab_size)


def unique_params(model_cfg) -> int:
    import torch

    from tinylm import GPT

    with torch.device("meta"):
        return GPT(model_cfg).num_params()


def fit_width(overrides: dict, target: int) -> int:
    """The width (a multiple of 2 x heads, so head_dim stays even) whose unique parameters
    come closest to ``target``."""
    base = model_config({k: v for k, v in overrides.items() if k != "model.n_embd"})
    step = 2 * base.n_head
    widths = range(step * 4, 1025, step)
    return min(widths, key=lambda w: abs(unique_params(replace(base, n_embd=w)) - target))


def train(text: str, name: str, overrides: dict, work: Path, budget: float, steps: int = 0) -> dict:
    run_dir = work / name
    limit = [f"optim.max_time={budget}"] if not steps else ["optim.max_time=0", f"optim.max_steps={steps}"]
    args = [f"data.source={text}", f"data.dir={work / 'data'}", f"run_dir={run_dir}", *limit,
            "log.interval=10", *[f"{k}={v}" for k, v in overrides.items()]]
    env = dict(os.environ, HF_HOME=str(work / "hf"), PYTHONUNBUFFERED="1", WANDB_MODE="disabled")
    t0 = time.time()
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"), PRESET, *args],
                          capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=(budget if not steps else steps) * 4 + 300)
    wall = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{name}: training failed:\n{proc.stderr[-3000:]}")
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    trains = [r for r in records if r["kind"] == "train"]
    final = [r for r in records if r["kind"] == "eval"][-1]
    span = trains[-1]["time"] - trains[0]["time"] if len(trains) > 1 else 0.0  # steady state
    tok_s = (trains[-1]["tokens"] - trains[0]["tokens"]) / span if span > 0 else float("nan")
    return {"wall": wall, "steps": final["step"], "tok_s": tok_s, "bpb": final["val_bits_per_byte"],
            "run": run_dir}


def packed(run: Path, work: Path, name: str, bits: int, clip: str = "search") -> tuple[int, float]:
    from tinylm.checkpoint.artifact import pack
    from tinylm.eval.loss import evaluate_checkpoint

    out = work / f"{name}-int{bits}-{clip}.tlm"
    info = pack(run, out, bits=bits, clip=clip)
    return info["bytes"], evaluate_checkpoint(out, device="cpu")["bits_per_byte"]


def prepare(text: str, work: Path) -> None:
    """Tokenizer and token files once, so no variant's budget pays for them."""
    env = dict(os.environ, HF_HOME=str(work / "hf"))
    subprocess.run([sys.executable, "-m", "tinylm.cli", "prepare", PRESET, f"data.source={text}",
                    f"data.dir={work / 'data'}"], check=True, capture_output=True, env=env, cwd=REPO,
                   timeout=600)


def bench_text(text: str, names: list[str], budget: float, steps: int = 0) -> list[str]:
    work = Path(tempfile.mkdtemp(prefix="golf-"))
    prepare(text, work)
    target = unique_params(model_config({}))
    rows = []
    for name in names:
        what, overrides = VARIANTS[name]
        overrides = dict(overrides)
        fit = overrides.get("model.n_embd")
        if isinstance(fit, str) and fit.startswith("fit"):  # "fit" or "fit<ratio>" of the bytes
            scale = Fraction(fit[3:] or 1)
            overrides["model.n_embd"] = fit_width(overrides, int(target * scale))
        cfg = model_config(overrides)
        r = train(text, name, overrides, work, budget, steps)
        (b8, q8), (b6, q6) = packed(r["run"], work, name, 8), packed(r["run"], work, name, 6)
        rows.append(f"| {name}: {what} | {cfg.n_embd} | {unique_params(cfg) / 1e6:.3f}M | "
                    f"{cfg.n_layer} | {r['steps']} | {r['tok_s']:,.0f} | {r['wall']:.0f} | "
                    f"{r['bpb']:.4f} | {b8:,} | {q8:.4f} | {b6:,} | {q6:.4f} |")
        print(rows[-1], flush=True)
        if name == "baseline":  # how the clip is chosen, on one model
            for clip in ("std", "absmax"):
                b, q = packed(r["run"], work, name, 6, clip)
                print(f"  (baseline int6, clip {clip}: {b:,} bytes, {q:.4f} bits/byte)", flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("texts", nargs="+", help="text files (Tiny Shakespeare, another of your choosing)")
    p.add_argument("--budget", type=float, default=90, help="seconds of wall time per variant")
    p.add_argument("--steps", type=int, default=0, help="N steps per variant instead of the budget")
    p.add_argument("--only", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    args = p.parse_args()
    limit = f"{args.steps} steps" if args.steps else f"{args.budget:.0f} s"
    print(f"{cpu_name()}; preset {PRESET}, {limit} per variant, scored after the round trip "
          "(search clip)")
    for text in args.texts:
        print(f"\n{text} ({Path(text).stat().st_size:,} bytes)\n")
        print("| variant | width | unique params | depth | steps | tokens/s | wall s | bpb fp32 | "
              "int8 bytes | int8 bpb | int6 bytes | int6 bpb |\n" + "|---" * 12 + "|", flush=True)
        bench_text(text, args.only, args.budget, args.steps)


if __name__ == "__main__":
    main()
