"""Multiple-choice scoring speed: items/s, batch-packed against one request at a time.

    python benchmarks/bench_tasks.py [--items 64] [--gpt2-items 8] [--batch-size 32]
                                     [--repeat 2] [--threads N] [--write-tasks DIR]

Shapes (random-init weights: the work per item does not depend on the values):
  default     configs/default.yaml's model: block 128, 4 layers, 4 heads, width 128, vocab 4096
  gpt2-small  configs/gpt2-small.yaml's: block 1024, 12 layers, 12 heads, width 768, vocab 32768
Items are HellaSwag-shaped (a ~230-character context, 4 endings of ~110 characters, as the
real validation set averages), cut from Python's language reference, tokenized by a 4096-token
BPE trained on it in a second. "packed" is tinylm's scorer (``eval.batch_size`` requests per
forward, longest first, right-padded); "one at a time" is the same code at batch size 1, which
is what a scorer without packing does. Each is timed --repeat times, the two interleaved round
by round, and the fastest kept; compare the ratio, not figures across machines.

--write-tasks DIR also writes hellaswag / arc_easy / piqa / lambada_openai jsonl files of the
same realistic lengths in the Hub schemas (what the in-loop overhead run in the README uses).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from pydoc_data.topics import topics

from tinylm.data.tokenizer import Tokenizer
from tinylm.eval.scoring import score_tasks
from tinylm.eval.tasks import TASKS, Item
from tinylm.model.config import GPTConfig
from tinylm.model.gpt import GPT

SHAPES = {
    "default": dict(block_size=128, n_layer=4, n_head=4, n_embd=128, vocab_size=4096),
    "gpt2-small": dict(block_size=1024, n_layer=12, n_head=12, n_embd=768, vocab_size=32768),
}


def _words() -> list[str]:
    return " ".join(topics[k] for k in sorted(topics)).split()


def _cut(words: list[str], start: int, chars: int) -> str:
    out, n = [], 0
    for w in words[start:]:
        if n >= chars:
            break
        out.append(w)
        n += len(w) + 1
    return " ".join(out)


def hellaswag_items(n: int) -> list[Item]:
    words, items = _words(), []
    for i in range(n):
        s = (i * 997) % (len(words) - 500)
        ctx = _cut(words, s, 230)
        endings = [_cut(words, s + 60 + 40 * j, 110) for j in range(4)]
        items.append(Item(i, [ctx] * 4, [" " + e for e in endings], i % 4, endings))
    return items


def write_tasks(root: Path, n: int = 200) -> None:
    """Realistic-length local task files in the Hub schemas, for in-loop runs."""
    words = _words()
    root.mkdir(parents=True, exist_ok=True)
    rows = {"hellaswag": [], "arc_easy": [], "piqa": [], "lambada_openai": []}
    for i in range(n):
        s = (i * 991) % (len(words) - 500)
        cut = lambda k, c: _cut(words, s + k, c)  # noqa: E731
        rows["hellaswag"].append({"activity_label": cut(0, 10), "ctx_a": cut(5, 150),
                                  "ctx_b": cut(40, 60), "endings": [cut(60 + 30 * j, 110) for j in range(4)],
                                  "label": str(i % 4)})
        rows["arc_easy"].append({"question": cut(0, 120) + "?", "answerKey": "ABCD"[i % 4],
                                 "choices": {"text": [cut(40 + 10 * j, 30) for j in range(4)],
                                             "label": list("ABCD")}})
        rows["piqa"].append({"goal": cut(0, 60), "sol1": cut(20, 100), "sol2": cut(50, 100),
                             "label": i % 2})
        rows["lambada_openai"].append({"text": cut(0, 350)})
    for name, rs in rows.items():
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rs))


def items_per_s(model, tok, items, batch_sizes: tuple[int, ...], repeat: int) -> list[float]:
    """Best items/s of each batch size, the variants interleaved round by round: on shared
    cores a burst of someone else's work then slows both, not only the one running."""
    best = [float("inf")] * len(batch_sizes)
    for _ in range(repeat):
        for k, bs in enumerate(batch_sizes):
            t0 = time.perf_counter()
            score_tasks(model, tok, [(TASKS["hellaswag"], items)],
                        max_len=model.config.block_size, batch_size=bs)
            best[k] = min(best[k], time.perf_counter() - t0)
    return [len(items) / b for b in best]


def cpu_name() -> str:
    try:
        names = [ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")]
        flags = next(ln for ln in open("/proc/cpuinfo") if ln.startswith("flags")).split()
        extra = [f for f in ("amx_tile", "avx512_bf16") if f in flags]
        return f"{names[0]} ({', '.join(extra) or 'no amx/avx512_bf16'})"
    except (OSError, IndexError, StopIteration):
        return platform.processor()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--items", type=int, default=64, help="items at the default shape")
    p.add_argument("--gpt2-items", type=int, default=8, help="items at gpt2-small's shape")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--write-tasks", type=Path, default=None, metavar="DIR")
    args = p.parse_args()
    if args.write_tasks:
        write_tasks(args.write_tasks)
        print(f"wrote task files under {args.write_tasks}")
    if args.threads:
        torch.set_num_threads(args.threads)
    texts = [topics[k] for k in sorted(topics)]
    tok = Tokenizer.train(texts, vocab_size=4096)
    print(f"CPU: {cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    print(f"{'shape':<11} {'items':>5} {'packed items/s':>15} {'one-at-a-time':>14} {'ratio':>6}")
    for shape, n in (("default", args.items), ("gpt2-small", args.gpt2_items)):
        if n < 1:  # --gpt2-items 0: the default shape only (the smoke test)
            continue
        torch.manual_seed(0)
        model = GPT(GPTConfig(**SHAPES[shape])).eval()
        items = hellaswag_items(n)
        one, packed = items_per_s(model, tok, items, (1, args.batch_size), args.repeat)
        print(f"{shape:<11} {n:>5} {packed:>15.2f} {one:>14.2f} {packed / one:>5.2f}x", flush=True)


if __name__ == "__main__":
    main()
