"""Data pipeline throughput, in MB/s of UTF-8 text: small corpora, and a scale row set.

    python benchmarks/bench_data.py                          # python-docs rows only
    python benchmarks/bench_data.py --scale-mb 1000          # + a ~1 GB corpus, 1 and 2 workers
    python benchmarks/bench_data.py --scale-mb 1000 --baseline-tree /tmp/old --sample-mb 200

Small rows (python-docs and any files given): ``Tokenizer.train``, raw ``encode_batch`` (no
files, nothing written: the ceiling), and a cold ``prepare()`` end to end.

Scale rows (``--scale-mb``): a corpus built locally by shuffling the paragraphs of the texts
this machine has (python-docs, the stdlib's sources, ``--extra`` files) with a fixed seed,
until it is that big. With one tokenizer for every row (trained once, passed as
``data.tokenizer``, so the rows time tokenizing, not BPE training):
  * ``raw encode_batch``: the corpus read as prepare's 16 KB rows, then
    ``Tokenizer.encode_batch`` in 256-row calls on all cores, nothing written: the limit;
  * ``prepare workers=N``: ``tinylm prepare`` end to end in a fresh process (plan, units,
    shards, seal), with its peak RSS and that of its largest worker, and the disk the store
    takes against the corpus;
  * ``baseline``: the same command from another checkout (``--baseline-tree``, e.g. a
    ``git worktree`` of the commit before the sharded store), for a before/after ratio.
``--sample-mb`` adds the tokenizer-sample row: bytes/token on a held-out tail of the corpus
for a BPE trained on the first N MB whole versus on ``data.tokenizer_sample`` characters of it.
Run it with nothing else on the machine; the CPU is printed with the table.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # before datasets is imported: never online
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["TOKENIZERS_PARALLELISM"] = "true"

from tinylm.data.corpus import python_docs_documents, text_file_rows  # noqa: E402
from tinylm.data.plan import plan, sample_texts  # noqa: E402
from tinylm.data.prepare import DataConfig, prepare  # noqa: E402
from tinylm.data.tokenizer import Tokenizer  # noqa: E402

Row = dict


def cpu_name() -> str:
    info = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=30).stdout
    model = next((ln.split(":", 1)[1].strip() for ln in info.splitlines()
                  if ln.startswith("Model name")), "unknown CPU")
    flags = [f for f in ("amx_bf16", "avx512_bf16", "avx512f", "avx2") if f" {f}" in info]
    return f"{model} ({', '.join(flags) or 'no avx2'}), {os.cpu_count()} cores"


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def paragraphs(extra: list[str]) -> list[str]:
    """Paragraphs of the prose and code this machine has, offline."""
    out = []
    for doc in python_docs_documents():
        out += [p for p in doc.split("\n\n") if p.strip()]
    for f in extra:
        out += [p for p in Path(f).read_text(errors="replace").split("\n\n") if p.strip()]
    return out


def build_corpus(path: Path, mb: int, extra: list[str], seed: int = 0) -> int:
    """~``mb`` MB of shuffled paragraphs, each pass a new order: no two passes alike."""
    paras, rng, written = paragraphs(extra), random.Random(seed), 0
    with open(path, "w", encoding="utf-8") as f:
        while written < mb * 1e6:
            rng.shuffle(paras)
            for p in paras:
                f.write(p + "\n\n")
                written += len(p.encode()) + 2
                if written >= mb * 1e6:
                    break
    return path.stat().st_size


def raw_encode(path: Path, tok: Tokenizer, batch: int = 256) -> float:
    """Seconds to encode the file in prepare's rows, nothing written (reading included)."""
    def run() -> None:
        rows = []
        for row in text_file_rows([str(path)]):
            rows.append(row["text"])
            if len(rows) == batch:
                tok.encode_batch(rows)
                rows = []
        if rows:
            tok.encode_batch(rows)
    return timed(run)


PREPARE = """
import json, os, resource, sys, time
from pathlib import Path
t = time.perf_counter()
from tinylm.data.prepare import DataConfig, prepare
d = prepare(DataConfig(**json.loads(sys.argv[1])), progress=False)
wall = time.perf_counter() - t
kb = lambda who: resource.getrusage(who).ru_maxrss
du = lambda root: sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
disk = du(d.dir) + du(Path(os.environ["HF_HOME"]))  # the store, and any Arrow copies or caches
print(json.dumps({"wall": wall, "rss_mb": kb(resource.RUSAGE_SELF) / 1024,
                  "worker_rss_mb": kb(resource.RUSAGE_CHILDREN) / 1024, "disk": disk}))
"""


def run_prepare(cfg: dict, tree: Path | None = None) -> dict:
    """``prepare`` in a fresh process (this checkout, or ``tree``'s) with its own empty HF
    cache: wall, peak RSS, disk (store + cache)."""
    hf = Path(cfg["dir"]) / "hf"
    hf.mkdir(parents=True)
    env = dict(os.environ, HF_HOME=str(hf),
               PYTHONPATH=str(tree) if tree else os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", PREPARE, json.dumps(cfg)], capture_output=True,
                          text=True, env=env, cwd=tree or None, timeout=6 * 3600)
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def scale_rows(args: argparse.Namespace, work: Path, table: list[Row]) -> None:
    corpus = work / "scale.txt"
    size = build_corpus(corpus, args.scale_mb, args.extra)
    mb = size / 1e6
    sample_cfg = DataConfig(source=str(corpus), tokenizer_sample=20_000_000)
    tok = Tokenizer.train(sample_texts(sample_cfg, plan(sample_cfg)["train"], [0]), args.vocab_size)
    tok.save(work / "tokenizer.json")
    base = {"source": str(corpus), "vocab_size": args.vocab_size,
            "tokenizer": str(work / "tokenizer.json")}
    runs = [("raw", None)] + [(f"prepare workers={w}", {**base, "workers": w}) for w in args.workers]
    if args.baseline_tree:
        runs.append((f"baseline ({Path(args.baseline_tree).name})", base))
    runs.append(("raw", None))  # again at the end: the limit is the faster of the two
    rows, raws = [], []
    for k, (name, cfg) in enumerate(runs):
        if cfg is None:
            raws.append(raw_encode(corpus, tok))
            print(f"  raw: {mb / raws[-1]:.2f} MB/s", file=sys.stderr)
            continue
        tree = Path(args.baseline_tree) if name.startswith("baseline") else None
        r = run_prepare({**cfg, "dir": str(work / f"run{k}")}, tree)
        rows.append({"row": name, "mb": mb, "s": r["wall"], **r})
        print(f"  {name}: {mb / r['wall']:.2f} MB/s", file=sys.stderr)
    raw = min(raws)
    table.append({"row": f"raw encode_batch (limit; {mb / max(raws):.2f}-{mb / raw:.2f} MB/s "
                         "before/after)", "mb": mb, "s": raw})
    table += [{**r, "vs_raw": raw / r["s"]} for r in rows]


def sample_row(args: argparse.Namespace, work: Path, table: list[Row]) -> None:
    """bytes/token on a held-out 5% tail: BPE on the first N MB whole vs on the sample."""
    corpus, held = work / "sample.txt", work / "held.txt"
    text = (work / "scale.txt").read_text() if (work / "scale.txt").exists() else None
    if text is None or len(text) < args.sample_mb * 1.05e6:
        build_corpus(work / "scale.txt", int(args.sample_mb * 1.06), args.extra)
        text = (work / "scale.txt").read_text()
    cut = int(args.sample_mb * 1e6)
    corpus.write_text(text[:cut])
    held.write_text(text[cut:cut + cut // 20])
    held_text = held.read_text()
    for label, chars in (("all", 10**12), ("sample", args.sample_chars)):
        cfg = DataConfig(source=str(corpus), vocab_size=args.vocab_size, tokenizer_sample=chars)
        t = time.perf_counter()
        tok = Tokenizer.train(sample_texts(cfg, plan(cfg)["train"], [0]), args.vocab_size)
        sec = time.perf_counter() - t
        ids = sum(len(x) for x in tok.encode_batch(held_text.split("\n\n")))
        table.append({"row": f"tokenizer on {label} ({min(chars, len(text[:cut])) / 1e6:.0f}M "
                             f"chars)", "mb": args.sample_mb, "s": sec,
                      "bytes_per_token": len(held_text.encode()) / ids})


def small_rows(args: argparse.Namespace, work: Path, table: list[Row]) -> None:
    sources = ([] if args.no_python_docs else ["python-docs"]) + list(args.files)
    for source in sources:
        cfg = DataConfig(source=source, vocab_size=args.vocab_size, dir=str(work / "small"))
        units = plan(cfg)["train"]
        texts = [t for b in sample_texts(cfg, units, [0]) for t in b]
        mb = sum(len(t.encode()) for t in texts) / 1e6
        name = Path(source).name
        tok = Tokenizer.train([texts], args.vocab_size)
        table.append({"row": f"{name}: train vocab {args.vocab_size}", "mb": mb,
                      "s": timed(lambda: Tokenizer.train([texts], args.vocab_size))})
        table.append({"row": f"{name}: raw encode_batch", "mb": mb,
                      "s": timed(lambda: [tok.encode_batch(texts[i:i + 256])
                                          for i in range(0, len(texts), 256)])})
        with tempfile.TemporaryDirectory() as tmp:
            table.append({"row": f"{name}: prepare, cold", "mb": mb, "s": timed(
                lambda: prepare(DataConfig(source=source, vocab_size=args.vocab_size, dir=tmp),
                                progress=False))})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="*", help="text files for the small rows besides python-docs")
    p.add_argument("--vocab-size", type=int, default=DataConfig.vocab_size)
    p.add_argument("--no-python-docs", action="store_true")
    p.add_argument("--scale-mb", type=int, default=0, help="build a corpus this big (0: skip)")
    p.add_argument("--workers", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2])
    p.add_argument("--extra", nargs="*", default=[], help="more text files for the corpus")
    p.add_argument("--baseline-tree", help="another checkout to time the same prepare with")
    p.add_argument("--sample-mb", type=int, default=0, help="the tokenizer-sample row's corpus")
    p.add_argument("--sample-chars", type=int, default=20_000_000)
    p.add_argument("--work", help="where corpora and stores go (default: a temp dir)")
    args = p.parse_args(argv)
    table: list[Row] = []
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        small_rows(args, work, table)
        if args.scale_mb:
            scale_rows(args, work, table)
        if args.sample_mb:
            sample_row(args, work, table)
    print(f"\n{cpu_name()}; load average {os.getloadavg()[0]:.1f}\n")
    print("| row | MB | s | MB/s | of raw | peak RSS MB (driver / worker) | disk / corpus | bytes/token |")
    print("|---|---:|---:|---:|---:|---|---:|---:|")
    for r in table:
        rss = f"{r['rss_mb']:.0f} / {r['worker_rss_mb']:.0f}" if "rss_mb" in r else ""
        disk = f"{r['disk'] / (r['mb'] * 1e6):.2f}" if "disk" in r else ""
        of_raw = f"{r['vs_raw']:.0%}" if "vs_raw" in r else ""
        bpt = f"{r['bytes_per_token']:.3f}" if "bytes_per_token" in r else ""
        print(f"| {r['row']} | {r['mb']:.1f} | {r['s']:.1f} | {r['mb'] / r['s']:.2f} | {of_raw} "
              f"| {rss} | {disk} | {bpt} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
