"""Generation speed: tokens/s and text bytes/s, with and without the KV cache, batch 1 and 8.

    python benchmarks/bench_generate.py [--checkpoint CKPT] [--new-tokens 200] [--repeat 3]
                                        [--threads N] [--compile]

Shapes (without --checkpoint; random-init weights, which is fine for speed: the work per token
does not depend on the values):
  default   configs/default.yaml's model: block 128, 4 layers, 4 heads, width 128, vocab 4096
  nanogpt   nanoGPT's CPU recipe: block 64, 4 layers, 4 heads, width 128 (vocab 4096 here, a
            byte-level BPE, where nanoGPT is char-level with 65); beside it, nanoGPT's own
            generate() (no cache, vocab 65: benchmarks/nanogpt_reference.py), batch 1
The tokenizer is a 4096-token BPE trained on Python's language reference in a second. With
--checkpoint, its own model and tokenizer are the one shape measured.

Every run samples at temperature 1 from the same seed with end-of-text ignored, so the cached
and uncached runs produce the same tokens (their logits differ only in rounding) and the byte
counts match: the ratio is a pure speed ratio. 200 new tokens pass the context several times,
so the cached path's window re-starts (a re-prefill of 3/4 of the context) are in the numbers.
Each configuration is timed --repeat times and the fastest is kept: on shared cores the
minimum is the least disturbed. Compare ratios within one run, not numbers across runs.
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
from pydoc_data.topics import topics

from tinylm.data.tokenizer import Tokenizer
from tinylm.infer.generate import generate
from tinylm.model.config import GPTConfig
from tinylm.model.gpt import GPT

SHAPES = {
    "default": dict(block_size=128, n_layer=4, n_head=4, n_embd=128, vocab_size=4096),
    "nanogpt": dict(block_size=64, n_layer=4, n_head=4, n_embd=128, vocab_size=4096),
}


def prompts_from_docs(n: int) -> list[str]:
    """n English openings of different lengths (batched rows are left-padded)."""
    texts = [topics[k] for k in sorted(topics)]
    return [" ".join(texts[i * 7].split()[: 6 + 3 * i]) for i in range(n)]


def timed(model: GPT, tok: Tokenizer, prompts: list[str], new_tokens: int, use_cache: bool,
          repeat: int, compile: bool = False) -> tuple[float, int, int]:
    """(best seconds, tokens generated, UTF-8 bytes of the generated text)."""
    best, out = float("inf"), []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = generate(model, tok, prompts, new_tokens, temperature=1.0, seed=0,
                       use_cache=use_cache, stop_at_eot=False, compile=compile)
        best = min(best, time.perf_counter() - t0)
    return best, new_tokens * len(prompts), sum(len(t.encode("utf-8")) for t in out)


def timed_nanogpt(c: GPTConfig, new_tokens: int, repeat: int) -> float:
    """Best seconds for nanoGPT's own generate() (benchmarks/nanogpt_reference.py) at this
    shape, char-level (vocab 65, one byte per token), batch 1, from a one-character prompt."""
    from nanogpt_reference import NanoGPT

    torch.manual_seed(0)
    model = NanoGPT(65, c.block_size, c.n_layer, c.n_head, c.n_embd).eval()
    idx = torch.zeros((1, 1), dtype=torch.long)
    model.generate(idx, 8)  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        model.generate(idx, new_tokens)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--new-tokens", type=int, default=200)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads; 1 (default) is fastest for these sizes and least "
                        "disturbed on shared cores")
    p.add_argument("--compile", action="store_true",
                   help="also the cached path with the one-token step compiled (generate(compile=True))")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=r"prompt \d+ has")  # a small context crops prompts

    if args.checkpoint:
        from tinylm.checkpoint.load import load_for_inference

        model, tok, _ = load_for_inference(args.checkpoint)
        models = {"checkpoint": model}
    else:
        tok = Tokenizer.train([topics[k] for k in sorted(topics)], 4096)
        torch.manual_seed(0)
        models = {name: GPT(GPTConfig(**shape)).eval() for name, shape in SHAPES.items()}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); tokenizer vocab "
          f"{tok.vocab_size}; {args.new_tokens} new tokens per row, best of {args.repeat}")

    header = f"| {'model':<10} | {'block':>5} | {'batch':>5} | {'cache':>5} | {'tokens/s':>9} | {'bytes/s':>9} | {'cache/no-cache':>14} |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    ratios: list[str] = []
    for name, model in models.items():
        c = model.config
        for batch in (1, 8):
            prompts = prompts_from_docs(batch)
            generate(model, tok, prompts, 8, seed=0)  # warm-up: allocator, kernels
            no_s, no_n, no_b = timed(model, tok, prompts, args.new_tokens, False, args.repeat)
            yes_s, yes_n, yes_b = timed(model, tok, prompts, args.new_tokens, True, args.repeat)
            row = f"| {name:<10} | {c.block_size:>5} | {batch:>5} |"
            print(f"{row} {'no':>5} | {no_n / no_s:>9.0f} | "
                  f"{no_b / no_s:>9.0f} | {'':>14} |")
            print(f"{row} {'yes':>5} | {yes_n / yes_s:>9.0f} | "
                  f"{yes_b / yes_s:>9.0f} | {(yes_b / yes_s) / (no_b / no_s):>13.1f}x |")
            if args.compile:  # the compile is paid once, in the warm-up (reported beside)
                t0 = time.perf_counter()
                generate(model, tok, prompts, 8, seed=0, compile=True)
                compile_s = time.perf_counter() - t0
                co_s, co_n, co_b = timed(model, tok, prompts, args.new_tokens, True, args.repeat, True)
                print(f"{row} {'comp':>5} | {co_n / co_s:>9.0f} | {co_b / co_s:>9.0f} | "
                      f"{(co_b / co_s) / (no_b / no_s):>13.1f}x | compiled in {compile_s:.1f} s")
            if yes_b != no_b or (args.compile and co_b != no_b):
                print(f"  (note: the texts differ in length: cached {yes_b}, uncached {no_b}"
                      f"{f', compiled {co_b}' if args.compile else ''} bytes)")
            if name == "nanogpt" and batch == 1:
                nano_s = timed_nanogpt(c, args.new_tokens, args.repeat)
                print(f"| {'nanoGPT':<10} | {c.block_size:>5} | {1:>5} | {'no':>5} | "
                      f"{args.new_tokens / nano_s:>9.0f} | {args.new_tokens / nano_s:>9.0f} | {'':>14} |")
                for what, (s_, n_, b_) in [("cached", (yes_s, yes_n, yes_b))] + (
                        [("cached+compiled", (co_s, co_n, co_b))] if args.compile else []):
                    ratios.append(f"nanoGPT shape, batch 1: tinylm {what} = "
                                  f"{(n_ / s_) / (no_n / no_s):.2f}x tinylm uncached, "
                                  f"{(n_ / s_) / (args.new_tokens / nano_s):.2f}x nanoGPT's "
                                  f"generate() in tokens/s, {(b_ / s_) / (args.new_tokens / nano_s):.1f}x "
                                  "in text bytes/s")
    for line in ratios:
        print(line)


if __name__ == "__main__":
    main()
