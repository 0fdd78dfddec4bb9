"""Pack a checkpoint into one small file: quantized weights, compressed, scored after the round trip.

    tinylm pack CKPT OUT [--bits 8|6] [--embed-bits 8|6] [--clip search|std|absmax] [--codec auto|lzma|zlib|zstd]
    tinylm evaluate OUT                 # bits per byte of what the file holds, its size beside it

Each matrix gets per-row symmetric codes with a clip chosen per row and an fp16 scale; norm
scales stay fp16; the tied matrix and every block shared across depth are stored once; then
the smallest of the available compressors (``--codec auto``). The file carries the
checkpoint's config and tokenizer, so it evaluates and generates alone.
"""

from __future__ import annotations

import argparse
from pathlib import Path


BITS, CLIPS = (8, 6), ("search", "std", "absmax")  # tinylm.model.quant's (not imported here:
# building the parser must not import torch; tests/cli/test_cli.py checks they agree)


def add_arguments(p: argparse.ArgumentParser, name: str) -> None:
    p.add_argument("checkpoint", metavar="CKPT", help="a checkpoint dir, or a run dir (its latest)")
    p.add_argument("out", type=Path, metavar="OUT")
    p.add_argument("--bits", type=int, choices=BITS, default=8, help="bits per weight of the blocks")
    p.add_argument("--embed-bits", type=int, choices=BITS, default=None,
                   help="bits of the tied embedding/head matrix (default: --bits)")
    p.add_argument("--clip", choices=CLIPS, default="search", help="how each row's clip is chosen")
    p.add_argument("--codec", default="auto", help="auto (the smallest), lzma, zlib or zstd")


def run(args: argparse.Namespace) -> int:
    from tinylm.checkpoint.artifact import pack
    from tinylm.train.rundir import require_writable

    require_writable(args.out.resolve().parent, "OUT")
    r = pack(args.checkpoint, args.out, args.bits, args.embed_bits, args.clip, args.codec)
    sizes = ", ".join(f"{k} {v:,}" for k, v in sorted(r["codec_bytes"].items(), key=lambda kv: kv[1]))
    print(f"packed {r['source']} -> {r['artifact']}: {r['bytes']:,} bytes ({r['codec']}; {sizes}); "
          f"int{r['bits']} blocks, int{r['embed_bits']} embedding, clip {r['clip']}; before "
          f"compression: codes {r['codes']:,} + scales {r['scales']:,} + fp16 {r['fp16']:,} + "
          f"tokenizer {r['tokenizer_bytes']:,} bytes")
    return 0
