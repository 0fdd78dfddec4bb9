"""Data pipeline throughput: tokenizer training and tokenizing, in MB/s of UTF-8 text.

    python benchmarks/bench_data.py                                  # python-docs only
    python benchmarks/bench_data.py /work/shared/data/tinyshakespeare.txt --vocab-size 8192

For each corpus (python-docs, then each file given):
  * ``train``: ``Tokenizer.train`` (byte-level BPE, Rust, parallel word counting);
  * ``map bs=N``: the pipeline's own tokenizing step (``tokenize_rows``: a batched
    ``Dataset.map`` with N rows per batch, N = ``DataConfig.tokenize_batch``), its arrow cache
    written to a fresh temp dir so nothing is reused;
  * ``encode_batch N``: the same rows through ``Tokenizer.encode_batch`` alone, N rows per
    call, no datasets and nothing written: the ceiling the map step can reach;
  * ``prepare``: a cold ``prepare()`` end to end (train + tokenize + write the .bin files);
  * text files are also timed with other row sizes (``--chunk-sizes``): ``encode_batch`` runs
    rows in parallel, so rows that are too big or too few leave a core idle.
Each figure is the best of ``--repeat`` runs. Other work shares these cores, so besides wall
MB/s the table gives MB per CPU-second (process CPU time, all threads): that one barely moves
with the load, and times the core count it is the ceiling on an idle machine. The load average
is printed with the table. Nothing touches the network or ~/.cache.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # before datasets is imported: never online
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets  # noqa: E402
import numpy as np  # noqa: E402

from tinylm.data import corpus  # noqa: E402
from tinylm.data.corpus import document_texts, load_documents  # noqa: E402
from tinylm.data.prepare import DataConfig, prepare, token_dtype, tokenize_rows  # noqa: E402
from tinylm.data.tokenizer import Tokenizer  # noqa: E402

Row = tuple[str, float, int, str, str, float, float]  # corpus, MB, rows, stage, setting, s, cpu s


def best_of(repeat: int, fn: Callable[[], object]) -> tuple[float, float]:
    """(wall s, CPU s) of the fastest of ``repeat`` runs: on a shared machine the fastest run
    is the least disturbed one."""
    runs = []
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        fn()
        runs.append((time.perf_counter() - w, time.process_time() - c))
    return min(runs)


def bench_corpus(name: str, source: str, args: argparse.Namespace, table: list[Row]) -> None:
    rows = load_documents(source, data_dir=args.data_dir, progress=False)
    texts = [t for batch in document_texts(rows) for t in batch]
    mb = sum(len(t.encode()) for t in texts) / 1e6

    def add(stage: str, setting: str, fn: Callable[[], object], repeat: int = args.repeat) -> None:
        sec, cpu = best_of(repeat, fn)
        table.append((name, mb, len(rows), stage, setting, sec, cpu))
        print(f"  {name} {stage} {setting}: {mb / sec:.2f} MB/s", file=sys.stderr)

    tok = Tokenizer.train(document_texts(rows), args.vocab_size)
    add("train", f"vocab {args.vocab_size}", lambda: Tokenizer.train(document_texts(rows),
                                                                     args.vocab_size))
    dtype = token_dtype(tok.vocab_size)
    for bs in args.batch_sizes:
        def run_map(bs: int = bs) -> None:
            with tempfile.TemporaryDirectory() as tmp:
                tokenize_rows(rows, tok, bs, dtype, desc=f"map bs={bs}", cache_dir=tmp)
        add("map", f"bs={bs}", run_map)
    for bs in args.batch_sizes:
        add("encode_batch", f"bs={bs}, no datasets",
            lambda bs=bs: [tok.encode_batch(texts[i:i + bs]) for i in range(0, len(texts), bs)])

    def run_prepare() -> None:
        cache = datasets.config.HF_DATASETS_CACHE
        with tempfile.TemporaryDirectory() as tmp:
            if source == "python-docs":  # the built corpus, not a 5 s re-parse of the stdlib
                for f in Path(args.data_dir).glob("python-docs-*.jsonl"):
                    shutil.copy(f, tmp)
            datasets.config.HF_DATASETS_CACHE = Path(tmp) / "hf"  # cold: no cached rows
            try:
                prepare(DataConfig(source=source, vocab_size=args.vocab_size, dir=tmp),
                        progress=False)
            finally:
                datasets.config.HF_DATASETS_CACHE = cache
    add("prepare", "cold, end to end", run_prepare, repeat=1)
    ids = np.concatenate([np.asarray(x, dtype=np.int64) for x in tok.encode_batch(texts)])
    print(f"  {name}: {mb * 1e6 / len(ids):.2f} bytes/token", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="*", help="text files to time besides python-docs")
    p.add_argument("--vocab-size", type=int, default=DataConfig.vocab_size)
    p.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")],
                   default=[64, 256, 1024], help="rows per map batch / encode_batch call")
    p.add_argument("--chunk-sizes", type=lambda s: [int(x) for x in s.split(",")],
                   default=[1 << 14, 1 << 16, 1 << 18], help="row sizes to try for text files")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--data-dir", default="data", help="where python-docs is cached")
    p.add_argument("--no-python-docs", action="store_true")
    args = p.parse_args(argv)
    datasets.disable_progress_bars()
    table: list[Row] = []
    default_chunk = corpus.CHUNK_BYTES
    with tempfile.TemporaryDirectory() as hf:  # rows loaded fresh, nothing from earlier runs
        datasets.config.HF_DATASETS_CACHE = Path(hf)
        if not args.no_python_docs:
            bench_corpus("python-docs", "python-docs", args, table)
        for f in args.files:
            for chunk in args.chunk_sizes:
                corpus.CHUNK_BYTES = chunk
                mark = "*" if chunk == default_chunk else ""
                bench_corpus(f"{Path(f).name} rows={chunk // 1024}K{mark}", f, args, table)
        corpus.CHUNK_BYTES = default_chunk
    print(f"\ncpu cores: {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}, "
          f"TOKENIZERS_PARALLELISM={os.environ.get('TOKENIZERS_PARALLELISM', 'unset')}, "
          f"best of {args.repeat}; defaults: tokenize_batch={DataConfig.tokenize_batch}, "
          f"text rows {default_chunk // 1024}K (*)\n")
    print("| corpus | MB | rows | stage | setting | s | MB/s | MB/CPU-s |")
    print("|---|---:|---:|---|---|---:|---:|---:|")
    for name, mb, rows, stage, setting, sec, cpu in table:
        print(f"| {name} | {mb:.2f} | {rows} | {stage} | {setting} | {sec:.2f} | {mb / sec:.2f} "
              f"| {mb / max(cpu, 1e-9):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
