"""What a checkpoint manifest's digest costs: candidates against the save time, gpt2-small shapes.

    python benchmarks/bench_digest.py [--preset gpt2-small] [--rounds 3]

Writes a checkpoint-sized set of files the way a run does (model.safetensors: the unique
weights; optimizer.safetensors: AdamW's two moments of every parameter) into a temp dir,
times that save, then digests the files with each candidate (sha256, blake2b, xxh3-128),
rounds interleaved, best round each. Prints MB/s and the digest's share of the save time:
the manifest (tinylm/checkpoint/manifest.py) uses the fastest that is still a strong hash of
the bytes against accidents (bit flips, truncation), which is what it guards against.
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import xxhash
from safetensors.torch import save_file

CANDIDATES = {
    "sha256": lambda: hashlib.sha256(),
    "blake2b": lambda: hashlib.blake2b(digest_size=32),
    "xxh3_128": lambda: xxhash.xxh3_128(),
}
CHUNK = 1 << 24  # 16 MiB reads, as the manifest reads


def digest(path: Path, make) -> str:
    h = make()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="gpt2-small")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    from tinylm import GPT, load_config

    cfg = load_config(args.preset)
    model_cfg = replace(cfg.model, vocab_size=cfg.data.vocab_size)
    with torch.device("meta"):
        shapes = {n: p.shape for n, p in GPT(model_cfg).named_parameters()}
    g = torch.Generator().manual_seed(0)
    weights = {n: torch.randn(s, generator=g) * 0.02 for n, s in shapes.items()}
    moments = {f"state/{n}/{k}": torch.randn(s, generator=g).abs() * 1e-4
               for n, s in shapes.items() for k in ("exp_avg", "exp_avg_sq")}
    work = Path(tempfile.mkdtemp(prefix="digest-"))
    saves = []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        save_file(weights, str(work / "model.safetensors"))
        save_file(moments, str(work / "optimizer.safetensors"))
        saves.append(time.perf_counter() - t0)
    files = [work / "model.safetensors", work / "optimizer.safetensors"]
    total = sum(f.stat().st_size for f in files)
    best = {name: float("inf") for name in CANDIDATES}
    for _ in range(args.rounds):
        for name, make in CANDIDATES.items():
            t0 = time.perf_counter()
            for f in files:
                digest(f, make)
            best[name] = min(best[name], time.perf_counter() - t0)
    save = min(saves)
    print(f"{args.preset}: {sum(t.numel() for t in weights.values()) / 1e6:.0f}M parameters, "
          f"{total / 1e9:.2f} GB of model + optimizer files, save {save:.2f} s (best of {args.rounds})")
    print("\n| digest | MB/s | seconds | share of the save time |\n|---|---|---|---|")
    for name, s in best.items():
        print(f"| {name} | {total / s / 1e6:,.0f} | {s:.2f} | {s / save:.1%} |")


if __name__ == "__main__":
    main()
