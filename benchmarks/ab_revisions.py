"""This checkout against another git revision, interleaved in ONE process: speed as ratios.

    python benchmarks/ab_revisions.py --base REV [--rounds 15] [--threads 1]

Two processes on this machine differ by 10-20% (and the CPU behind it changes between
sessions), so "before vs after" of a change is only worth a ratio measured in one process,
round by round (A B, B A, ...). This script exports ``tinylm/`` of ``--base`` into a temp dir as
the package ``tinylm_base`` and times, with each revision's own code:

- generation: ``generate()`` at batch 1 and 8, KV cache, 200 new tokens, at the default
  shape (4 layers, width 128, block 128, vocab 4096) and nanoGPT's (block 64); the texts of
  both revisions must be identical (same weights, same seed), or the row says so;
- a training step: forward, backward, clip, fused AdamW of each revision's GPT, at the
  default preset's shape and batch, fp32.

Only the public API both revisions share is used (GPT, GPTConfig, generate, Tokenizer), so
it measures what users get: this checkout's from the top level (``tinylm.GPT``), the base's
from wherever its layout defined them (:data:`BASE_NAMES`: the 0.2 packages or the flat 0.1
modules). Best round for generation (the least disturbed), median round
for training steps (a step is long enough to average itself).
"""

from __future__ import annotations

import argparse
import importlib
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
SHAPES = {"default": dict(block_size=128, n_layer=4, n_head=4, n_embd=128, vocab_size=4096),
          "nanogpt": dict(block_size=64, n_layer=4, n_head=4, n_embd=128, vocab_size=4096)}
PROMPTS = ["The quick brown fox", "In the beginning", "A", "Once upon a time", "x", "y z",
           "Hello", "The with statement"]
# name -> the modules that defined it, newest layout first (0.2 packages, 0.1 flat modules)
BASE_NAMES = {"GPT": ("model.gpt", "model"), "GPTConfig": ("model.config", "model"),
              "generate": ("infer.generate", "generate"), "Tokenizer": ("data.tokenizer", "tokenizer")}


def base_api() -> dict:
    """The base revision's GPT, GPTConfig, generate and Tokenizer, from the exported package."""
    api = {}
    for name, modules in BASE_NAMES.items():
        for mod in modules:
            try:
                api[name] = getattr(importlib.import_module(f"tinylm_base.{mod}"), name)
                break
            except (ImportError, AttributeError):
                continue
        else:
            raise SystemExit(f"--base: no {name} in {', '.join(modules)}")
    return api


def export_base(rev: str, into: Path) -> None:
    """``tinylm/`` of ``rev`` as the package ``tinylm_base`` under ``into``."""
    files = subprocess.run(["git", "ls-tree", "-r", "--name-only", rev, "tinylm"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if not name.endswith(".py"):
            continue
        text = subprocess.run(["git", "show", f"{rev}:{name}"], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout
        text = re.sub(r"\b(from|import) tinylm\b", r"\1 tinylm_base", text)
        out = into / "tinylm_base" / Path(name).relative_to("tinylm")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)


def generation_rows(base, rounds: int) -> list[str]:
    from pydoc_data.topics import topics

    import tinylm
    from tinylm import Tokenizer

    tok = Tokenizer.train([topics[k] for k in sorted(topics)], 4096)
    path = Path(tempfile.mkdtemp()) / "tokenizer.json"
    tok.save(path)
    base_tok = base["Tokenizer"].load(path)
    rows = []
    for shape_name, shape in SHAPES.items():
        torch.manual_seed(0)
        a = base["GPT"](base["GPTConfig"](**shape)).eval()
        b = tinylm.GPT(tinylm.GPTConfig(**shape)).eval()
        b.load_state_dict(a.state_dict())
        for batch in (1, 8):
            prompts = PROMPTS[:batch]
            runs = {"base": lambda: base["generate"](
                        a, base_tok, prompts, 200, temperature=1.0, seed=0, stop_at_eot=False),
                    "this": lambda: tinylm.generate(
                        b, tok, prompts, 200, temperature=1.0, seed=0, stop_at_eot=False)}
            best, texts = {k: float("inf") for k in runs}, {}
            for r in range(rounds):  # A B, then B A: neither always runs first
                for k, run in (list(runs.items()) if r % 2 == 0 else list(runs.items())[::-1]):
                    t0 = time.perf_counter()
                    texts[k] = run()
                    best[k] = min(best[k], time.perf_counter() - t0)
            n = 200 * batch
            rows.append(f"| generate {shape_name}, batch {batch} | {n / best['base']:.0f} tok/s | "
                        f"{n / best['this']:.0f} tok/s | {best['base'] / best['this']:.3f} | "
                        f"{'same' if texts['base'] == texts['this'] else 'DIFFERENT'} |")
            print(rows[-1], flush=True)
    return rows


def train_row(base, rounds: int) -> str:
    import tinylm

    shape, B = {**SHAPES["default"]}, 16  # the default preset's model and batch
    g = torch.Generator().manual_seed(0)
    x, y = (torch.randint(0, shape["vocab_size"], (B, shape["block_size"]), generator=g)
            for _ in range(2))
    torch.manual_seed(0)
    a = base["GPT"](base["GPTConfig"](**shape))
    b = tinylm.GPT(tinylm.GPTConfig(**shape))
    b.load_state_dict(a.state_dict())
    opts = {id(m): torch.optim.AdamW(m.parameters(), lr=1e-3, fused=True) for m in (a, b)}

    def step(m) -> None:
        _, loss = m(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opts[id(m)].step()
        opts[id(m)].zero_grad(set_to_none=True)

    times: dict[str, list[float]] = {"base": [], "this": []}
    for m in (a, b, a, b):
        step(m)
    for r in range(rounds):
        for k, m in (("base", a), ("this", b))[::1 if r % 2 == 0 else -1]:
            t0 = time.perf_counter()
            for _ in range(3):
                step(m)
            times[k].append((time.perf_counter() - t0) / 3 * 1e3)
    mb, mt = statistics.median(times["base"]), statistics.median(times["this"])
    row = f"| train step, default shape, batch {B} | {mb:.1f} ms | {mt:.1f} ms | {mb / mt:.3f} | |"
    print(row, flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base", required=True, help="a git revision to compare this checkout with")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: least disturbed)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    work = Path(tempfile.mkdtemp(prefix="ab-"))
    export_base(args.base, work)
    sys.path.insert(0, str(work))
    base = base_api()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                          text=True).stdout.strip()
    print(f"base {args.base} vs this checkout ({head}, plus uncommitted changes), torch "
          f"{torch.__version__}, {torch.get_num_threads()} thread(s), {args.rounds} rounds\n")
    print("| what | base | this | this / base speed | texts |\n|---|---|---|---|---|")
    generation_rows(base, args.rounds)
    train_row(base, max(3, args.rounds // 2))


if __name__ == "__main__":
    main()
