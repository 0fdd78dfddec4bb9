"""The store's units as a datatrove pipeline: one machine's processes, a Slurm array, or Ray.

The same units as the local pool: ``prepare`` plans them and writes ``plan.json`` and the
tokenizer; datatrove task ``r`` of ``W`` runs units ``r, r+W, ...`` through the very
``tokenize_unit`` the pool calls, so every task writes into the one store directory (shared
by the machines) and the bytes are a local run's. The last step seals: locally and on Ray
``prepare`` seals when the executor returns; on Slurm, where submitting returns at once, a
one-task job that depends on the array seals. No scheduler of ours: datatrove places,
retries and requeues the tasks.

A relaunch resumes on two layers of markers: datatrove skips a task whose
``completions/<rank>`` file its logging dir holds, the store a unit whose marker vouches for
its shard. The first alone would trust a completion after a shard was lost, so before each
launch ``forget_unfinished`` drops the completion of every task with an unfinished unit.
datatrove is optional (``tinylm[cluster]``): without it, ``run_units_with`` says so.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from tinylm.data.corpus import DataError
from tinylm.data.pool import tokenizer_threads
from tinylm.data.store import read_marker, read_plan, seal, tokenize_unit, unit_count

try:
    from datatrove.pipeline.base import PipelineStep
except ImportError:  # the cluster extra is not installed: run_units_with says so
    PipelineStep = object  # type: ignore[assignment,misc]

MISSING = "datatrove is not installed: pip install 'tinylm[cluster]'"


def finished(store: Path) -> set[int]:
    """The units whose marker vouches for their shard (the store's own test; one plan read)."""
    units = read_plan(store)["units"]
    return {i for i, e in enumerate(units) if read_marker(Path(store), e["shard"]) is not None}


class TokenizeUnits(PipelineStep):
    """Task ``rank`` of ``world_size`` tokenizes units ``rank::world_size`` into the store.

    It reads and makes no documents (the store is its output): like datatrove's mergers it
    passes on what an earlier step yields, so alone it yields nothing."""

    name = "tokenize units"
    type = "🔢 - TOKENIZER"

    def __init__(self, store: str | Path, threads: int = 1):
        super().__init__()
        self.store, self.threads = Path(store).resolve(), threads  # (tasks start anywhere)

    def run(self, data: Optional[Iterable] = None, rank: int = 0, world_size: int = 1):
        done = finished(self.store)
        with tokenizer_threads(self.threads):
            for index in range(rank, unit_count(self.store), world_size):
                if index in done:  # an earlier run's (tokenize_unit would skip it too)
                    self.stat_update("units_skipped")
                    continue
                with self.track_time(unit="unit"):
                    marker = tokenize_unit(self.store, index)
                self.stat_update("units")
                self.stat_update("tokens", value=marker["tokens"], unit="unit")
                self.stat_update("documents", value=marker["documents"], unit="unit")
        if data:
            yield from data


class SealStore(PipelineStep):
    """One task: check every unit's marker and write ``manifest.json`` last, as ``prepare``
    does (with the ``data.max_tokens`` the plan recorded: the job needs only the path)."""

    name = "seal store"
    type = "💽 - WRITER"

    def __init__(self, store: str | Path):
        super().__init__()
        self.store = Path(store).resolve()

    def run(self, data: Optional[Iterable] = None, rank: int = 0, world_size: int = 1):
        if world_size != 1:
            raise DataError(f"SealStore runs as one task, not {world_size}")
        manifest = seal(self.store, read_plan(self.store).get("max_tokens"))
        self.stat_update("shards", value=len(manifest["shards"]))
        if data:
            yield from data


def forget_unfinished(logging_dir: str | Path, store: Path, tasks: int, units: int) -> list[int]:
    """Drop datatrove's completion of each task with an unfinished unit (a shard lost since,
    or other ``--tasks`` than last time), which it would skip. Returns the ranks dropped."""
    from datatrove.io import get_datafolder

    folder, done, forgotten = get_datafolder(str(logging_dir)), finished(store), []
    for rank in range(tasks):
        mark = f"completions/{rank:05d}"
        if not set(range(rank, units, tasks)) <= done and folder.isfile(mark):
            folder.rm(mark)
            forgotten.append(rank)
    return forgotten


def run_units_with(executor: str, *, tasks: Optional[int] = None, workers: Optional[int] = None,
                   logging_dir: Optional[str] = None, slurm: Optional[dict] = None,
                   ray: Optional[dict] = None) -> Callable[[Path, int], bool]:
    """``prepare``'s ``run_units(store, units) -> done`` on a datatrove executor, checked now
    (before prepare trains a tokenizer). ``tasks``: one per unit by default; ``workers``:
    tasks at once (default: the CPUs here, locally; else no limit); ``logging_dir``: default
    ``<store>/datatrove``, where a relaunch finds its completions. ``slurm``/``ray``: the
    executor's own arguments (slurm needs ``partition`` and ``time``). Done is True when the
    units ran (local, Ray), False when submitted (Slurm: its last job seals)."""
    if executor not in ("local", "slurm", "ray"):
        raise DataError(f"executor {executor!r}: expected local, slurm or ray")
    if PipelineStep is object:
        raise DataError(MISSING)
    if executor == "ray" and importlib.util.find_spec("ray") is None:
        raise DataError("ray is not installed: pip install 'datatrove[ray]'")
    if executor == "slurm" and not {"partition", "time"} <= set(slurm or {}):
        raise DataError("the slurm executor needs a partition and a time limit "
                        "(--slurm-partition, --slurm-time)")

    def run_units(store: Path, units: int) -> bool:
        store = Path(store).resolve()
        n = tasks or units
        logs = str(logging_dir or store / "datatrove")
        forget_unfinished(f"{logs}/tokenize", store, n, units)
        if executor == "local":
            return _local(store, n, workers, f"{logs}/tokenize")
        if executor == "ray":
            return _ray(store, n, workers, f"{logs}/tokenize", dict(ray or {}))
        return _slurm(store, n, workers, logs, dict(slurm or {}))

    return run_units


def _run(executor: Any, store: Path) -> bool:
    """Run to the end. Ray logs a failed task and carries on: completions are what count."""
    executor.run()
    if left := executor.get_incomplete_ranks(skip_completed=True):
        raise DataError(f"{store}: datatrove tasks {left[:8]} did not finish; see "
                        f"{executor.logging_dir.path}/logs, then rerun (done units are kept)")
    return True


def _local(store: Path, tasks: int, workers: Optional[int], logs: str) -> bool:
    from datatrove.executor import LocalPipelineExecutor

    workers = max(1, min(workers or os.cpu_count() or 1, tasks))
    step = TokenizeUnits(store, threads=(os.cpu_count() or 1) // workers)
    return _run(LocalPipelineExecutor([step], tasks=tasks, workers=workers, logging_dir=logs),
                store)  # a failed task raises in run() here (the pool re-raises it)


def _ray(store: Path, tasks: int, workers: Optional[int], logs: str, options: dict) -> bool:
    import ray
    from datatrove.executor import RayPipelineExecutor

    if not ray.is_initialized():  # datatrove expects it: RAY_ADDRESS's cluster, else a local one
        ray.init()
    step = TokenizeUnits(store, threads=options.get("cpus_per_task", 1))
    return _run(RayPipelineExecutor([step], tasks=tasks, workers=workers or -1, logging_dir=logs,
                                    **options), store)


def _slurm(store: Path, tasks: int, workers: Optional[int], logs: str, options: dict) -> bool:
    from datatrove.executor import SlurmPipelineExecutor

    if sys.prefix != sys.base_prefix and not {"venv_path", "condaenv", "env_command"} & {*options}:
        options["venv_path"] = os.path.join(sys.prefix, "bin", "activate")  # this venv, there too
    name = options.pop("job_name", f"tinylm-{store.name}")
    step = TokenizeUnits(store, threads=options.get("cpus_per_task", 1))
    tokenize = SlurmPipelineExecutor([step], tasks=tasks, workers=workers or -1, job_name=name,
                                     logging_dir=f"{logs}/tokenize", **options)
    options.pop("cpus_per_task", None)  # sealing reads markers: one CPU is plenty
    # a failed tokenizing task cancels the seal job (else it would pend forever on afterok)
    options["sbatch_args"] = {"kill-on-invalid-dep": "yes", **options.get("sbatch_args", {})}
    sealing = SlurmPipelineExecutor([SealStore(store)], tasks=1, depends=tokenize,
                                    job_name=f"{name}-seal", logging_dir=f"{logs}/seal",
                                    skip_completed=False, **options)  # reseal every launch
    sealing.run()  # submits the tokenize array first, then the seal job afterok of it
    return False
