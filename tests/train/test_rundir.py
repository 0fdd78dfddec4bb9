"""tinylm.train.rundir: one writer per run directory, also after the launcher is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from helpers import CPU_2PROC, REPO, env, free_port, tiny_overrides, world_size, write_corpus
from tinylm.train.rundir import LauncherWatch, RunDirError, RunDirLock, require_writable


def test_lock_names_the_holder_and_is_free_after_release(tmp_path):
    first = RunDirLock(tmp_path)
    with pytest.raises(RunDirError, match=rf"in use by another run \(process {os.getpid()}\)"):
        RunDirLock(tmp_path)
    first.release()
    RunDirLock(tmp_path).release()


def test_require_writable(tmp_path):
    assert require_writable(tmp_path / "a" / "b", "run_dir").is_dir()
    (tmp_path / "f").write_text("x")
    with pytest.raises(RunDirError, match=r"run_dir=.*/f/g: not a writable directory"):
        require_writable(tmp_path / "f" / "g", "run_dir")


def test_a_plain_process_is_nobodys_rank(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert not LauncherWatch().launcher_gone()  # nohup python train.py: never stopped


def _pids_of(marker: str) -> set[int]:
    pids = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if marker in (d / "cmdline").read_bytes().decode(errors="replace"):
                    pids.add(int(d.name))
            except OSError:
                pass
    return pids


def kill_launcher_and_wait(launcher: subprocess.Popen, ranks: set[int], seconds: float) -> list[int]:
    """kill -9 the launcher's process group; the ranks still alive after ``seconds``."""
    os.killpg(launcher.pid, signal.SIGKILL)
    launcher.wait(timeout=30)
    deadline = time.time() + seconds
    while time.time() < deadline and any(Path(f"/proc/{p}").exists() for p in ranks):
        time.sleep(0.2)
    return [p for p in ranks if Path(f"/proc/{p}").exists()]


@pytest.mark.slow
def test_ranks_stop_when_their_launcher_is_killed(tmp_path):
    """kill -9 of the launcher's process group leaves torch elastic's ranks running (they are
    in their own sessions); they must notice and stop, not write on into the run dir."""
    corpus = write_corpus(tmp_path / "corpus.txt")
    args = tiny_overrides(tmp_path, corpus, **{"optim.max_steps": 100000, "log.interval": 1,
                                                "checkpoint.interval": 20, "eval.interval": 0})
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CPU_2PROC),
           "--main_process_port", str(free_port()), str(REPO / "scripts" / "train.py"),
           "configs/tiny.yaml", *args]
    launcher = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=env(tmp_path), cwd=REPO, start_new_session=True)
    watchdog = threading.Timer(240, lambda: os.killpg(launcher.pid, signal.SIGKILL))
    watchdog.start()
    lines = []
    try:
        for line in launcher.stdout:  # until both ranks are training
            lines.append(line)
            if line.startswith("step") and "step     25/" in line:
                break
        assert world_size("".join(lines)) == 2
        ranks = _pids_of(str(tmp_path / "run")) - {launcher.pid}
        assert len(ranks) >= 2, "".join(lines)[-2000:]
        alive = kill_launcher_and_wait(launcher, ranks, 60)
        for p in alive:  # don't leave orphans behind a failed test
            os.kill(p, signal.SIGKILL)
        assert not alive, "orphaned ranks went on training"
    finally:
        watchdog.cancel()
    saved = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    time.sleep(2)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == saved
    # the lock died with the main rank: a relaunch into the same run dir works
    args = tiny_overrides(tmp_path, corpus, **{"optim.max_steps": 3})
    again = subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"), "configs/tiny.yaml",
                            *args], capture_output=True, text=True, env=env(tmp_path), cwd=REPO,
                           timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]


@pytest.mark.slow
def test_ranks_stop_when_their_launcher_dies_right_after_starting_them(tmp_path):
    """A launcher killed within moments of spawning its ranks: before, they were still alive
    after 400 s and trained the run alone (they noted their parent only when the trainer
    started). Now the kernel signals them when it dies (PR_SET_PDEATHSIG, set before torch is
    imported), or they find themselves re-parented and stop: all gone within seconds."""
    corpus = write_corpus(tmp_path / "corpus.txt")
    args = tiny_overrides(tmp_path, corpus, **{"optim.max_steps": 100000, "eval.interval": 0})
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CPU_2PROC),
           "--main_process_port", str(free_port()), str(REPO / "scripts" / "train.py"),
           "configs/tiny.yaml", *args]
    launcher = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=env(tmp_path), cwd=REPO, start_new_session=True)
    ranks: set[int] = set()
    try:
        deadline = time.time() + 120
        while len(ranks) < 2 and time.time() < deadline:  # the moment both ranks exist
            ranks = _pids_of(str(tmp_path / "run")) - {launcher.pid}
            time.sleep(0.02)
        assert len(ranks) >= 2, "the launcher never started 2 ranks"
        alive = kill_launcher_and_wait(launcher, ranks, 30)
    finally:
        for p in ranks:  # never leave orphans behind
            if Path(f"/proc/{p}").exists():
                os.kill(p, signal.SIGKILL)
    assert not alive, "ranks outlived their launcher"
    assert not (tmp_path / "run" / "checkpoints").exists() or not any(
        (tmp_path / "run" / "checkpoints").iterdir())  # nothing trained on alone


@pytest.mark.slow
def test_a_refused_two_process_run_is_one_line_and_exit_2_per_rank(tmp_path):
    """A second run into a locked run_dir under a 2-process launch: one error line (it was
    printed by both ranks), each rank exits 2. The launcher turns any failed rank into exit 1
    (torch elastic's ChildFailedError); --quiet drops its traceback, leaving its failure table."""
    corpus = write_corpus(tmp_path / "corpus.txt")
    (tmp_path / "run").mkdir()
    lock = RunDirLock(tmp_path / "run")  # another run holds it
    try:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CPU_2PROC),
               "--main_process_port", str(free_port()), "--quiet", str(REPO / "scripts" / "train.py"),
               "configs/tiny.yaml", *tiny_overrides(tmp_path, corpus)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env(tmp_path), cwd=REPO,
                              timeout=300)
    finally:
        lock.release()
    out = proc.stdout + proc.stderr
    assert world_size(out) == 2
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: run_dir={tmp_path / 'run'}: in use by another run (process "
                      f"{os.getpid()}); stop it, or choose another run_dir"], out[-3000:]
    assert out.count("exitcode  : 2") == 2 and proc.returncode == 1, out[-3000:]
    assert "Traceback" not in out
    assert not (tmp_path / "run" / "checkpoints").exists()
