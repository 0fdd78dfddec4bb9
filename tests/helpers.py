"""Shared test helpers (plain functions; fixtures live in the test modules and conftest)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

from pydoc_data.topics import topics

REPO = Path(__file__).resolve().parent.parent
HOOKS = REPO / "tests" / "dist" / "train_with_hooks.py"  # the trainer with fault/observe hooks
CPU_2PROC = REPO / "configs" / "accelerate" / "cpu-2proc.yaml"


def write_corpus(path: Path, n_bytes: int = 150_000) -> Path:
    """Real English prose (Python's language reference), offline, deterministic."""
    text, keys = "", sorted(topics)
    i = 0
    while len(text.encode()) < n_bytes:
        text += topics[keys[i % len(keys)]] + "\n"
        i += 1
    path.write_text(text)
    return path


def tiny_overrides(tmp: Path, corpus: Path, **extra) -> list[str]:
    """Overrides that make configs/tiny.yaml run in seconds on a local corpus."""
    base = {"run_dir": tmp / "run", "data.dir": tmp / "data", "data.source": corpus,
            "data.vocab_size": 320, "log.wandb": "disabled"}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(tmp: Path) -> dict:
    e = dict(os.environ)
    e.update(HF_HOME=str(tmp / "hf"), WANDB_MODE="disabled", PYTHONUNBUFFERED="1",
             HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return e


def quiet_env(tmp: Path) -> dict:
    """env, with one thread per subprocess (tiny tensors: thread hand-offs cost more than math)."""
    return {**env(tmp), "OMP_NUM_THREADS": "1"}


def accelerate_2proc(script: Path, args: list[str], tmp: Path, timeout: int = 300,
                     launcher: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """``accelerate launch`` (with ``launcher`` flags, e.g. --max_restarts 1) of 2 gloo ranks."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CPU_2PROC),
           "--main_process_port", str(free_port()), *launcher, str(script), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env(tmp), timeout=timeout, cwd=REPO)


def failure_excerpt(log: str, width: int = 2500) -> str:
    """The part of a multi-process log that says why a rank died (the launcher's own summary,
    at the end, names only the signal)."""
    marks = [i for i in (log.find("terminate called"), log.find("Traceback")) if i >= 0]
    start = max(0, min(marks) - 300) if marks else max(0, len(log) - width)
    return log[start:start + width]


def world_size(log: str) -> int:
    """The process count the trainer states on its first line (asserted by every dist test)."""
    m = re.search(r"tinylm: (\d+) process", log)
    assert m, f"no process-count line in output:\n{log[-3000:]}"
    return int(m.group(1))



def results(out: str) -> list[dict]:
    return [json.loads(m) for m in re.findall(r"RESULT (\{[^\n]*\})", out)]


def finished(proc, out: str, res: list[dict]) -> bool:
    """Every rank finished its run and reported it, and the launcher exited 0. (No tolerance
    for a rank aborted at exit any more: train/rundir.py's exit_rank removed the cause.)"""
    return len(res) == 2 and all(r["ok"] for r in res) and proc.returncode == 0


def launch(tmp_path, corpus, *hook_args, launcher: tuple[str, ...] = (), **overrides):
    args = [*hook_args, "configs/tiny.yaml", *tiny_overrides(tmp_path, corpus, **overrides)]
    proc = accelerate_2proc(HOOKS, args, tmp_path, launcher=launcher)
    out = proc.stdout + proc.stderr
    assert world_size(out) == 2, failure_excerpt(out)
    return proc, out, results(proc.stdout)


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str):
    """A real filesystem of ``size`` (tmpfs: needs root, as CI and this machine have) mounted
    at ``path``, or a pytest skip where it cannot be mounted."""
    import pytest

    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                      capture_output=True, timeout=30).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root?)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)
