"""Generate text from a checkpoint, streamed to stdout as it is sampled.

    tinylm generate CKPT --prompt TEXT [--prompt TEXT ...] [--prompt-file F]
        [--max-new-tokens N] [--temperature T] [--top-k K] [--top-p P] [--seed S]
        [--stop STR ...] [--no-cache]

CKPT is a checkpoint directory, or a run directory (its newest checkpoint). Each --prompt is
one prompt, --prompt-file F adds the whole file as one more; with neither, stdin is the
prompt. Several prompts are sampled together as one batch: the first streams live, the others
print when the batch is done, each after a separator line. Every sample is printed as prompt
+ continuation. --temperature 0 is greedy. A prompt longer than the model's context is cropped
from the left, with a warning on stderr. An empty prompt (``--prompt ""``, empty stdin) samples
unconditionally: the model starts after an end-of-text token, as at the start of a new document
(nanoGPT's ``<|endoftext|>`` start); stderr says so, since an empty stdin is easy to pass by mistake.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

SEPARATOR = "\n" + "-" * 40 + "\n"


def add_arguments(p: argparse.ArgumentParser, name: str) -> None:
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
    p.add_argument("--compile", action="store_true",
                   help="CPU: torch.compile the one-token step (~10 s once; ~1.6x faster steps "
                        "at small widths; for long generations). GPUs replay it as a CUDA graph anyway")


def read_prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompt)
    if args.prompt_file is not None:
        try:
            prompts.append(args.prompt_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"--prompt-file {args.prompt_file}: {e}") from None
    if not prompts:
        prompts.append(sys.stdin.read())
    for i, prompt in enumerate(prompts):
        if not prompt:
            which = f"prompt {i + 1}" if len(prompts) > 1 else "the prompt"
            print(f"note: {which} is empty: sampling unconditionally (from an end-of-text token, "
                  "as a new document starts)", file=sys.stderr)
    return prompts


def _one_line_warnings(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr if file is None else file)


def run(args: argparse.Namespace) -> int:
    import torch

    from tinylm.checkpoint.format import resolve_checkpoint
    from tinylm.checkpoint.load import load_for_inference
    from tinylm.infer.generate import generate

    warnings.showwarning = _one_line_warnings
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tokenizer, _ = load_for_inference(resolve_checkpoint(args.checkpoint), device)
    prompts = read_prompts(args)
    shown = False  # the first prompt is echoed with its first piece: errors come first

    def stream(row: int, text: str) -> None:
        nonlocal shown
        if row == 0:
            sys.stdout.write(text if shown else prompts[0] + text)
            sys.stdout.flush()
            shown = True

    texts = generate(model, tokenizer, prompts, args.max_new_tokens, temperature=args.temperature,
                     top_k=args.top_k, top_p=args.top_p, seed=args.seed, stop=args.stop,
                     use_cache=not args.no_cache, stream=stream, compile=args.compile)
    if not shown:
        sys.stdout.write(prompts[0])
    for prompt, text in zip(prompts[1:], texts[1:]):
        sys.stdout.write(SEPARATOR + prompt + text)
    sys.stdout.write("\n")
    return 0
