"""Convert between tinylm checkpoints and Hugging Face transformers (Llama) directories.

    tinylm convert to-hf CKPT OUT        # then AutoModelForCausalLM.from_pretrained(OUT)
    tinylm convert from-hf HF_DIR OUT    # a tinylm checkpoint: evaluate, generate, student...

CKPT is a checkpoint directory or a run directory (its newest checkpoint). OUT must not exist
or be empty. The tie is explicit both ways (tie_word_embeddings), and every field tinylm can't
represent exactly is refused in one line; see tinylm/convert/hf.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser, name: str) -> None:
    p.add_argument("direction", choices=["to-hf", "from-hf"])
    p.add_argument("source", metavar="SOURCE", help="CKPT (to-hf) or HF_DIR (from-hf)")
    p.add_argument("out", type=Path, metavar="OUT")


def run(args: argparse.Namespace) -> int:
    from tinylm.convert.hf import export_to_hf, import_from_hf

    convert = export_to_hf if args.direction == "to-hf" else import_from_hf
    print(f"wrote {convert(args.source, args.out)}")
    return 0
