"""One benchmark for a config and a text file: prepare, train, time-to-quality, generation.

    python benchmarks/bench.py CONFIG TEXT [--target 2.72] [--launch accelerate|python]
                               [--variant NAME:key=v,key=v ...]

For each variant (the config as is, then each --variant's overrides) it:
  1. prepares the text (tokenizer training + tokenizing) in a fresh dir: MB/s;
  2. launches `scripts/train.py` as a fresh process, by default through `accelerate launch` as
     the README tells a user to (`--launch python` skips accelerate's ~2 s start), and reads metrics.jsonl:
     training tokens/s and text bytes/s (steady state), wall seconds from launch to the first
     eval at or under --target bits per byte (everything included: interpreter start, data
     preparation, compilation), the final val bits per byte, the total wall time;
  3. the sync check's cost: its measured ms against interval x step time;
  4. generation from the final checkpoint: tokens/s and bytes/s, batch 1, KV cache.
Then prints one table. Variants run back to back in one invocation, and each row also shows
its speed as a ratio to the first row: this machine's speed drifts between processes, so
compare within a table, not across tables. torch.compile's cache starts empty in each
invocation and is shared by its variants: the first variant that compiles pays the cold compile,
and repeating it (same overrides, another name) shows the warm-cache time.

Tiny Shakespeare split like nanoGPT: the last 10% of the text is validation (data.val_fraction
0.1 over the token stream, which is the same text up to a token boundary).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


LAUNCHERS = {
    "accelerate": [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1",
                   "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"],
    "python": [sys.executable],
}


def time_to_target(evals: list[dict], target: float, t0: float) -> float | None:
    """Seconds from ``t0`` to the first eval record at or under ``target`` bits per byte."""
    hit = next((r for r in evals if r["val_bits_per_byte"] <= target), None)
    return hit["time"] - t0 if hit else None


def run_variant(config: str, text: str, overrides: list[str], target: float, work: Path,
                compile_cache: Path, launch: str = "accelerate") -> dict:
    run_dir, data_dir = work / "run", work / "data"
    args = [f"data.source={text}", f"run_dir={run_dir}", f"data.dir={data_dir}", "log.wandb=disabled",
            "log.plot=false", *overrides]
    env = dict(os.environ, HF_HOME=str(work / "hf"), PYTHONUNBUFFERED="1",
               TORCHINDUCTOR_CACHE_DIR=str(compile_cache))
    t0 = time.time()
    proc = subprocess.run([*LAUNCHERS[launch], str(REPO / "scripts" / "train.py"), config, *args],
                          capture_output=True, text=True, env=env, cwd=REPO)
    wall = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"training failed ({' '.join(overrides)}):\n{proc.stderr[-2000:]}")
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    if len(train) < 2:
        raise SystemExit(f"fewer than 2 train lines in metrics.jsonl ({' '.join(overrides)}): "
                         "lower log.interval for a run this short")
    evals = [r for r in records if r["kind"] == "eval"]
    meta = json.loads(next(data_dir.glob("*/manifest.json")).read_text())
    bytes_per_token = meta["train_bytes"] / meta["train_tokens"]
    tok_s = train[-1]["tokens_per_s"]  # running mean over all steps but the first
    checks = [float(m) for m in re.findall(r"sync check @ step \d+: .*\(([\d.]+) ms\)", proc.stdout)]
    steps = train[-1]["step"]
    step_ms = 1000 * (train[-1]["time"] - train[0]["time"]) / max(steps - train[0]["step"], 1)
    interval = int(re.search(r"sync_check:\n  interval: (\d+)", (run_dir / "config.yaml").read_text()).group(1))

    prep = _time_prepare(text, overrides, work)
    gen = _time_generation(run_dir)
    return {
        "overrides": " ".join(overrides) or "(config as is)",
        "prepare_MB_s": prep,
        "tokens_s": tok_s,
        "bytes_s": tok_s * bytes_per_token,
        "time_to_target_s": time_to_target(evals, target, t0),
        "final_bpb": evals[-1]["val_bits_per_byte"],
        "steps": steps,
        "wall_s": wall,
        "sync_check_ms": sum(checks) / len(checks) if checks else None,
        "sync_overhead_pct": 100 * (sum(checks) / len(checks)) / (interval * step_ms) if checks and interval else None,
        "gen_tok_s": gen[0],
        "gen_bytes_s": gen[1],
    }


def _time_prepare(text: str, overrides: list[str], work: Path) -> float:
    """MB/s of preparing the text (tokenizer training + tokenizing + writing), fresh dir."""
    from tinylm.data.prepare import DataConfig, prepare

    vocab = next((int(o.split("=")[1]) for o in overrides if o.startswith("data.vocab_size=")), None)
    cfg_vocab = vocab or _config_vocab()
    d = work / "prep"
    t0 = time.perf_counter()
    prepare(DataConfig(source=text, vocab_size=cfg_vocab, dir=str(d)), progress=False)
    return os.path.getsize(text) / 1e6 / (time.perf_counter() - t0)


def _config_vocab() -> int:
    from tinylm.train.config import load_config

    return load_config(ARGS.config).data.vocab_size


def _time_generation(run_dir: Path, n: int = 200) -> tuple[float, float]:
    import torch

    from tinylm.checkpoint.format import latest_checkpoint, load_model
    from tinylm.data.tokenizer import Tokenizer
    from tinylm.infer.generate import generate

    ckpt = latest_checkpoint(run_dir / "checkpoints")
    model, _ = load_model(ckpt)
    tok = Tokenizer.load(ckpt / "tokenizer.json")
    generate(model, tok, ["The "], 8, seed=0)  # warm-up
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = generate(model, tok, ["The "], n, seed=0, stop_at_eot=False)
    dt = time.perf_counter() - t0
    return n / dt, len(out[0].encode()) / dt


def fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def main() -> None:
    global ARGS
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("text")
    p.add_argument("--target", type=float, default=2.72, help="val bits per byte to time (nanoGPT's 2.72)")
    p.add_argument("--variant", action="append", default=[], help="NAME:key=v,key=v (compared to the base)")
    p.add_argument("--launch", choices=sorted(LAUNCHERS), default="accelerate",
                   help="how the training process starts (the time to target counts from here)")
    p.add_argument("--json", help="also write the rows here")
    ARGS = p.parse_args()
    variants = [("base", [])] + [(v.split(":", 1)[0], v.split(":", 1)[1].split(",")) for v in ARGS.variant]
    rows = []
    # torch.compile's cache: empty at the start of each invocation, shared by its variants, so
    # the first variant that compiles a shape pays the cold compile and a repeat of it is warm.
    compile_cache = Path(tempfile.mkdtemp(prefix="bench-inductor-"))
    for name, ov in variants:
        work = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
        try:
            rows.append({"name": name, **run_variant(ARGS.config, ARGS.text, ov, ARGS.target, work,
                                                     compile_cache, ARGS.launch)})
        finally:
            shutil.rmtree(work, ignore_errors=True)
        r = rows[-1]
        print(f"[{name}] {r['overrides']}: {r['tokens_s']:.0f} tok/s, final {r['final_bpb']:.3f} bpb, "
              f"to-target {fmt(r['time_to_target_s'], '.1f')} s, wall {r['wall_s']:.1f} s", flush=True)
    shutil.rmtree(compile_cache, ignore_errors=True)
    base = rows[0]
    print(f"\nconfig {ARGS.config}, text {ARGS.text}, target {ARGS.target} bits/byte, "
          f"launched with {ARGS.launch}\n")
    print("| variant | overrides | prep MB/s | train tok/s | train bytes/s | x base | "
          f"s to {ARGS.target} | final bpb | steps | wall s | sync ms (overhead) | gen tok/s | gen bytes/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        sync = f"{fmt(r['sync_check_ms'], '.1f')} ({fmt(r['sync_overhead_pct'], '.2f')}%)"
        print(f"| {r['name']} | {r['overrides']} | {r['prepare_MB_s']:.2f} | {r['tokens_s']:.0f} | "
              f"{r['bytes_s']:.0f} | {r['bytes_s'] / base['bytes_s']:.2f} | "
              f"{fmt(r['time_to_target_s'], '.1f')} | {r['final_bpb']:.3f} | {r['steps']} | "
              f"{r['wall_s']:.1f} | {sync} | {r['gen_tok_s']:.0f} | {r['gen_bytes_s']:.0f} |")
    if ARGS.json:
        Path(ARGS.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
