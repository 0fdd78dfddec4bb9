"""tinylm's own executor: a store's units on N local processes, behind one progress bar.

Workers are spawned processes, not ``datasets.map(num_proc)``'s forks: a fork after the
tokenizer's thread pool started turns those threads off (and ``datasets`` has hang reports,
#6319, #6734). Each of N workers gets cores/N tokenizer threads, so N = one per core runs one
thread per core. Units go out in order; a worker that finishes takes the next one, so one slow
unit never idles the others for long. Progress reaches the parent through a queue: one bar
over all workers, with MB/s and an ETA.
"""

from __future__ import annotations

import contextlib
import os
import queue as queue_lib
import sys
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from pathlib import Path
from typing import Iterator, Optional

from tqdm.auto import tqdm

from tinylm.data.corpus import DataError
from tinylm.data.store import read_marker, read_plan, tokenize_unit

_QUEUE = None  # the worker's end of the progress queue (set by _init)


def _init(progress_queue, threads: int) -> None:
    """In each worker, before the tokenizer's thread pool starts: its share of the cores."""
    global _QUEUE
    os.environ["RAYON_NUM_THREADS"] = str(threads)
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    _QUEUE = progress_queue


def _work(store: str, index: int) -> dict:
    return tokenize_unit(Path(store), index, lambda n: _QUEUE.put((index, n)))


def _capped(entries: list[dict], markers: dict[int, dict], max_tokens: Optional[int]) -> bool:
    """Whether the units done from the start of the source already hold ``max_tokens``."""
    if max_tokens is None:
        return False
    taken = 0
    for i, e in enumerate(entries):
        if e["split"] != "train":
            continue
        if i not in markers:
            return False
        taken += markers[i]["tokens"]
        if taken >= max_tokens:
            return True
    return False


def run_units_locally(store: Path, n: int, workers: Optional[int] = None, progress: bool = True,
                      max_tokens: Optional[int] = None) -> None:
    """Run every unit of ``store`` not yet done on ``workers`` processes (None: one per core);
    with ``max_tokens``, stop once the units from the start of the source hold that many."""
    entries = read_plan(store)["units"]
    markers = {i: m for i, e in enumerate(entries) if (m := read_marker(store, e["shard"]))}
    todo = [i for i in range(n) if i not in markers]
    total = sum(e["size"] for e in entries) or None  # None: a stream's size is unknown
    workers = max(1, min(workers or os.cpu_count() or 1, len(todo) or 1))
    bar = tqdm(total=total, initial=sum(m["bytes"] for m in markers.values()), unit="B",
               unit_scale=True, disable=not progress,
               desc=f"tokenizing {len(todo)} of {n} unit(s), {workers} worker(s)")
    with bar:
        if workers == 1:  # in this process: the tokenizer keeps all its threads
            for i in todo:
                if _capped(entries, markers, max_tokens):
                    break
                seen = [0]

                def tick(b: int, seen=seen) -> None:
                    bar.update(b - seen[0])
                    seen[0] = b
                markers[i] = tokenize_unit(store, i, tick)
            return
        _run_pool(store, todo, entries, markers, workers, bar, max_tokens)


def _run_pool(store: Path, todo: list[int], entries: list[dict], markers: dict[int, dict],
              workers: int, bar: tqdm, max_tokens: Optional[int]) -> None:
    ctx = get_context("spawn")
    progress_queue = ctx.Queue()
    threads = max(1, (os.cpu_count() or 1) // workers)
    seen: dict[int, int] = {}
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init,
                             initargs=(progress_queue, threads)) as pool:
        with _main_not_reimported():  # every worker starts during these submits
            pending: dict[Future, int] = {pool.submit(_work, str(store), i): i for i in todo}
        try:
            while pending:
                finished, _ = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                _drain(progress_queue, seen, bar)
                for f in finished:
                    i = pending.pop(f)
                    markers[i] = f.result()  # a worker's DataError is raised here, in one line
                    bar.update(markers[i]["bytes"] - seen.get(i, 0))
                    seen[i] = markers[i]["bytes"]
                if _capped(entries, markers, max_tokens):
                    for f in pending:
                        f.cancel()
                    pending = {f: i for f, i in pending.items() if not f.cancelled()}
        except BrokenProcessPool:
            raise DataError(f"{store}: a worker died (killed, or out of memory?); rerun "
                            "tinylm prepare: finished units are kept") from None
        except BaseException:
            for f in pending:
                f.cancel()
            raise


@contextlib.contextmanager
def tokenizer_threads(n: Optional[int] = None) -> Iterator[None]:
    """Let the tokenizer use its threads here (``n`` of them; None: all cores). The CLI turns
    them off for forked DataLoader workers, and cluster tasks inherit its environment (Slurm's
    ``--export=ALL`` too); preparing forks nothing: its workers are spawned."""
    new = {"TOKENIZERS_PARALLELISM": "true"}
    if n is not None:
        new["RAYON_NUM_THREADS"] = str(max(1, n))
    saved = {k: os.environ.get(k) for k in new}
    os.environ.update(new)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _main_not_reimported() -> Iterator[None]:
    """Spawned workers run tinylm's functions only, so they need not import the caller's
    ``__main__``; spawn would, re-running a script without an ``if __name__`` guard (or
    failing on ``python -`` / ``-c``). Hide it while the workers start."""
    main = sys.modules["__main__"]
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if k in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__spec__ = None
    try:
        yield
    finally:
        main.__dict__.update(saved)


def _drain(progress_queue, seen: dict[int, int], bar: tqdm) -> None:
    """Apply every progress report waiting in the queue to the bar."""
    while True:
        try:
            i, b = progress_queue.get_nowait()
        except queue_lib.Empty:
            return
        if b > seen.get(i, 0):  # a late report of a finished unit is already counted
            bar.update(b - seen.get(i, 0))
            seen[i] = b
