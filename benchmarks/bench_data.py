"""Data pipeline throughput: tokenizer training and tokenizing, in MB/s of UTF-8 text.

    python benchmarks/bench_data.py                                  # python-docs only
    python benchmarks/bench_data.py /work/shared/data/tinyshakespeare.txt --vocab-size 8192

For each corpus (python-docs, then each file given):
  * ``train``: ``Tokenizer.train`` (byte-level BPE, Rust, parallel word counting);
  * ``map bs=N``: the pipeline's own tokenizing step, ``Dataset.map(batched=True)`` with N rows
    per batch, arrow cache written to a fresh temp dir (so nothing is reused);
  * ``encode_batch``: the same rows through ``Tokenizer.encode_batch`` alone, no datasets: the
    ceiling the map step can reach;
  * text files are also timed with other row sizes (``--chunk-sizes``): ``encode_batch`` runs
    rows in parallel, so rows that are too big or too few leave a core idle.
Each figure is the best of ``--repeat`` runs: other work shares these cores, so the load
average is printed with the table. Measured figures and what limits them: ``data/README.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import datasets
import numpy as np

from tinylm import corpus
from tinylm.corpus import document_texts, load_documents
from tinylm.data import token_dtype, tokenize_rows
from tinylm.tokenizer import Tokenizer


def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_corpus(name: str, rows: datasets.Dataset, args, table: list) -> None:
    mb = sum(len(t.encode()) for batch in document_texts(rows) for t in batch) / 1e6
    tok_box: list[Tokenizer] = []
    sec = best_of(args.repeat, lambda: tok_box.append(
        Tokenizer.train(document_texts(rows), args.vocab_size)))
    tok = tok_box[-1]
    table.append((name, mb, len(rows), "train", f"vocab {args.vocab_size}", sec))
    dtype = token_dtype(tok.vocab_size)
    for bs in args.batch_sizes:
        def run_map() -> None:
            with tempfile.TemporaryDirectory() as tmp:
                tokenize_rows(rows, tok, bs, dtype, desc=f"map bs={bs}", cache_dir=tmp)
        table.append((name, mb, len(rows), "map", f"bs={bs}", best_of(args.repeat, run_map)))
    texts = [t for batch in document_texts(rows) for t in batch]
    table.append((name, mb, len(rows), "encode_batch", "all rows, no datasets",
                  best_of(args.repeat, lambda: tok.encode_batch(texts))))
    ids = np.concatenate([np.asarray(x, dtype=np.int64) for x in tok.encode_batch(texts)])
    print(f"  {name}: {mb * 1e6 / len(ids):.2f} bytes/token", file=sys.stderr)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="*", help="text files to time besides python-docs")
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")],
                   default=[16, 64, 256, 1024])
    p.add_argument("--chunk-sizes", type=lambda s: [int(x) for x in s.split(",")],
                   default=[1 << 14, 1 << 16, 1 << 18], help="row sizes to try for text files")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--data-dir", default="data", help="where python-docs is cached")
    args = p.parse_args()
    datasets.disable_progress_bars()
    table: list[tuple] = []
    with tempfile.TemporaryDirectory() as hf:  # rows loaded fresh, nothing from earlier runs
        datasets.config.HF_DATASETS_CACHE = Path(hf)
        bench_corpus("python-docs", load_documents("python-docs", data_dir=args.data_dir,
                                                   progress=False), args, table)
        for f in args.files:
            for chunk in args.chunk_sizes:
                corpus.CHUNK_BYTES = chunk
                bench_corpus(f"{Path(f).name} rows={chunk // 1024}K", load_documents(f), args, table)
    print(f"\ncpu cores: {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}, TOKENIZERS_PARALLELISM="
          f"{os.environ.get('TOKENIZERS_PARALLELISM', 'unset')}, best of {args.repeat}\n")
    print(f"| {'corpus':<28} | {'MB':>5} | {'rows':>5} | {'stage':<12} | {'setting':<22} | {'s':>6} | {'MB/s':>6} |")
    print(f"|{'-' * 30}|{'-' * 7}|{'-' * 7}|{'-' * 14}|{'-' * 24}|{'-' * 8}|{'-' * 8}|")
    for name, mb, rows, stage, setting, sec in table:
        print(f"| {name:<28} | {mb:5.2f} | {rows:5d} | {stage:<12} | {setting:<22} | {sec:6.2f} | {mb / sec:6.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
