"""How often a finished 2-process CPU launch still exits non-zero (issue 26, item 8).

    python benchmarks/exit_status.py --launches 300            # the count, a table
    python benchmarks/exit_status.py --launches 300 --cores    # + a core dump of each abort

Each launch is the user's command, ``accelerate launch --config_file
configs/accelerate/cpu-2proc.yaml scripts/train.py configs/tiny.yaml`` for a few steps, in a
fresh run_dir on one prepared corpus, with ``PYTHONFAULTHANDLER=1`` (the Python stacks of every
thread on SIGABRT). A launch counts as a flake when both ranks logged their final checkpoint
and the launcher still exited non-zero. With ``--cores``, ranks run under ``ulimit -c
unlimited`` in their own directory, and ``gdb -batch -ex 'thread apply all bt'`` is printed
for each core. The logs of every non-zero launch are kept under ``--work``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from helpers import CPU_2PROC, env, free_port, tiny_overrides, write_corpus  # noqa: E402

from bench_data import cpu_name  # noqa: E402  (this directory: the one lscpu reader)


def launch(work: Path, i: int, corpus: Path, steps: int, cores: bool) -> tuple[int, str, float]:
    """One launch; (exit status, log, seconds)."""
    here = work / f"launch-{i:04d}"
    here.mkdir()
    overrides = tiny_overrides(work, corpus, **{"run_dir": here / "run", "optim.max_steps": steps,
                                                "eval.interval": 0, "log.plot": "false"})
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CPU_2PROC),
           "--main_process_port", str(free_port()), str(REPO / "scripts" / "train.py"),
           str(REPO / "configs" / "tiny.yaml"), *overrides]
    shell = ("ulimit -c unlimited; " if cores else "") + 'exec "$0" "$@"'
    t0 = time.perf_counter()
    proc = subprocess.run(["bash", "-c", shell, *cmd], capture_output=True,
                          text=True, timeout=300, env={**env(work), "PYTHONFAULTHANDLER": "1"},
                          cwd=here)
    return proc.returncode, proc.stdout + proc.stderr, time.perf_counter() - t0


def backtraces(directory: Path) -> str:
    out = []
    for core in sorted(directory.glob("core*")):
        gdb = subprocess.run(["gdb", "-batch", "-ex", "thread apply all bt 25", sys.executable,
                              str(core)], capture_output=True, text=True, timeout=300)
        out.append(f"--- {core}\n{gdb.stdout[-20000:]}")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--launches", type=int, default=100)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--cores", action="store_true", help="core dumps + gdb backtraces of aborts")
    p.add_argument("--work", help="where runs and kept logs go (default: a temp dir)")
    args = p.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="tinylm-exit-"))
    work.mkdir(parents=True, exist_ok=True)
    corpus = write_corpus(work / "corpus.txt")
    outcomes: Counter[str] = Counter()
    seconds = []
    for i in range(args.launches):
        rc, log, s = launch(work, i, corpus, args.steps, args.cores)
        seconds.append(s)
        finished = log.count("saved checkpoint") >= 1 and f"step-{args.steps}" in log
        kind = ("ok" if rc == 0 else
                "flake: finished, then exit %d%s" % (rc, " (SIGABRT)" if "SIGABRT" in log else "")
                if finished else f"failed run, exit {rc}")
        outcomes[kind] += 1
        here = work / f"launch-{i:04d}"
        if rc != 0:
            (here / "launch.log").write_text(log + "\n" + backtraces(here))
            print(f"launch {i}: {kind} -> {here / 'launch.log'}", flush=True)
        else:
            shutil.rmtree(here)
    print(f"\n{args.launches} launches of 2 CPU processes, {args.steps} steps each, "
          f"{sum(seconds) / len(seconds):.1f} s per launch; {cpu_name()}\n")
    print("| outcome | launches |\n|---|---:|")
    for kind, n in outcomes.most_common():
        print(f"| {kind} | {n} |")


if __name__ == "__main__":
    main()
