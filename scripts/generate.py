"""Generate text from a tinylm checkpoint, streamed to stdout as it is sampled.

    python scripts/generate.py CKPT --prompt TEXT [--prompt TEXT ...] [--prompt-file F]
        [--max-new-tokens N] [--temperature T] [--top-k K] [--top-p P] [--seed S]
        [--stop STR ...] [--no-cache]

CKPT is a checkpoint directory, or a run directory (its newest checkpoint). Each --prompt is
one prompt, --prompt-file F adds the whole file as one more; with neither, stdin is the
prompt. Several prompts are sampled together as one batch: the first streams live, the others
print when the batch is done, each after a separator line. Every sample is printed as prompt
+ continuation. --temperature 0 is greedy. A prompt longer than the model's context is cropped
from the left, with a warning on stderr.
Errors: one line "error: ..." on stderr, exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

import torch

from tinylm.checkpoint import CheckpointError, find_checkpoints
from tinylm.evaluate import load_for_inference
from tinylm.cli import ArgumentParser
from tinylm.generate import generate

SEPARATOR = "\n" + "-" * 40 + "\n"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__.split("\n")[0], usage=__doc__.split("\n\n")[1].strip())
    p.add_argument("checkpoint", metavar="CKPT")
    p.add_argument("--prompt", action="append", default=[], help="repeat for a batch")
    p.add_argument("--prompt-file", type=Path, default=None, help="the whole file is one prompt")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=None, help="stop at this string (repeatable)")
    p.add_argument("--no-cache", action="store_true", help="recompute the window every token")
    return p.parse_args(argv)


def read_prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompt)
    if args.prompt_file is not None:
        try:
            prompts.append(args.prompt_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"--prompt-file {args.prompt_file}: {e}") from None
    if not prompts:
        prompts.append(sys.stdin.read())
    return prompts


def _one_line_warnings(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr if file is None else file)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    warnings.showwarning = _one_line_warnings
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        ckpt = find_checkpoints(args.checkpoint)[-1]
        model, tokenizer, _ = load_for_inference(ckpt, device)
        prompts = read_prompts(args)
        shown = False  # the first prompt is echoed with its first piece: errors come first

        def stream(row: int, text: str) -> None:
            nonlocal shown
            if row == 0:
                sys.stdout.write(text if shown else prompts[0] + text)
                sys.stdout.flush()
                shown = True

        texts = generate(model, tokenizer, prompts, args.max_new_tokens,
                         temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                         seed=args.seed, stop=args.stop, use_cache=not args.no_cache,
                         stream=stream)
    except (CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not shown:
        sys.stdout.write(prompts[0])
    for prompt, text in zip(prompts[1:], texts[1:]):
        sys.stdout.write(SEPARATOR + prompt + text)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main(sys.argv[1:]))
