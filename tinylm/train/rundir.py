"""What a training run owns on disk and in the process tree: one writer per run directory.

- :class:`RunDirLock`: an exclusive OS file lock on ``<run_dir>/.lock``, held by the main
  process for the whole run and released by the OS when it exits, however it exits (a
  ``kill -9`` included). A second run into the same directory gets a one-line error naming
  the holder's PID, before it writes anything.
- :class:`LauncherWatch`: torch elastic (what ``accelerate launch`` and ``torchrun`` use) starts
  ranks in their own sessions, so killing the launcher with ``kill -9`` leaves them running,
  re-parented to init, and they go on writing checkpoints into the run directory. A rank
  started by a launcher checks every step that its parent is still the launcher, and stops.
- :func:`require_writable`: a directory the run will write to, checked before the long work.
- :func:`launch_time`: when the run was launched, which a time budget counts from.
- :func:`exit_rank`: how a rank of a multi-process run ends, without interpreter finalization.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
import signal
import sys
from pathlib import Path


class RunDirError(RuntimeError):
    """The run directory is unusable: not writable, or in use by another run."""


def require_writable(directory: str | Path, what: str) -> Path:
    """Create ``directory`` if needed and prove a file can be written in it; else one line."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test-"):
            pass
    except OSError as e:
        raise RunDirError(f"{what}={directory}: not a writable directory "
                          f"({e.strerror or type(e).__name__})") from None
    return directory


class RunDirLock:
    """``lock = RunDirLock(run_dir)`` takes the lock or raises; ``lock.release()`` (or the
    process's exit) gives it back. The file keeps the holder's PID for the error message."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / ".lock"
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(self._fd)
            raise RunDirError(f"run_dir={self.path.parent}: in use by another run (process "
                              f"{holder}); stop it, or choose another run_dir") from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = -1


class LauncherWatch:
    """Knows whether this process was started by a launcher and whether that launcher lives."""

    def __init__(self) -> None:
        # LOCAL_RANK: set by torch elastic for every rank it starts; a plain `python train.py`
        # (maybe under nohup, whose shell may exit) is nobody's rank and is never stopped.
        self.parent = (_LAUNCHER[0] or os.getppid()) if "LOCAL_RANK" in os.environ else None

    def launcher_gone(self) -> bool:
        return self.parent is not None and os.getppid() != self.parent


_LAUNCHER: list[int | None] = [None]  # the launcher's pid, as bind_to_launcher saw it
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def bind_to_launcher() -> None:
    """A rank started by a launcher dies with it, however early: the kernel sends it SIGTERM
    when its parent exits (``PR_SET_PDEATHSIG``), set here, the first thing ``tinylm train``
    does, before torch is imported. A launcher that died even sooner left this rank
    re-parented to init: RunDirError at once. (Later, LauncherWatch also stops a rank whose
    parent changed, at the next step.)"""
    if "LOCAL_RANK" not in os.environ or not sys.platform.startswith("linux"):
        return  # nobody's rank (python train.py, nohup): never stopped for its parent's exit
    import ctypes  # (Linux only)

    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    _LAUNCHER[0] = os.getppid()
    if _LAUNCHER[0] == 1:
        raise RunDirError("the launcher that started this rank is gone (re-parented to init "
                          "before training began); this rank stops instead of training alone")


def launch_time() -> float:
    """Wall-clock time the run was launched: its launcher's start (``accelerate launch``,
    ``torchrun``) for a rank a launcher started, else this process's start; from /proc, to
    about a second (the boot time it is counted from is whole seconds). Elsewhere: now."""
    pid = os.getppid() if "LOCAL_RANK" in os.environ else os.getpid()
    try:
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
        with open(f"/proc/{pid}/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, StopIteration, ValueError, IndexError):
        return time.time()


def claim_run_dir(run_dir: Path, accelerator) -> RunDirLock | None:
    """The main process checks ``run_dir`` is writable and locks it (the others get None); a
    failure there is the same one-line RunDirError on every process, the process group
    released first."""
    lock, error = None, [None]
    if accelerator.is_main_process:
        try:
            require_writable(run_dir, "run_dir")
            lock = RunDirLock(run_dir)
        except RunDirError as e:
            error = [str(e)]
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list  # (here: bind_to_launcher runs first)

        broadcast_object_list(error)
    if error[0]:
        accelerator.end_training()
        raise RunDirError(error[0])
    return lock


def exit_rank(status: int) -> None:
    """End this process now with ``status`` if it is one rank of several; else return.

    Why: ~1% of finished 2-process CPU launches exited 1 with a rank killed by SIGABRT
    ("terminate called without an active exception"). The core dump (benchmarks/exit_status.py
    --cores) shows it: gloo's worker thread (``ProcessGroupGloo::runLoop``) still destroys the
    last barrier's work after the barrier has returned, and with it a prior all_gather's work
    whose tensors are Python objects. Their decref takes the GIL; Python 3.11 is finalizing by
    then and ends any thread that asks for the GIL with ``pthread_exit``, whose forced unwind
    through that noexcept destructor calls ``std::terminate``. A live process group is never
    torn down under a finalizing interpreter if the rank skips finalization: by the time this
    runs, every file is written atomically, the trackers are finished and the process group
    destroyed, so only the streams need flushing.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said anyway
            pass
    os._exit(status)
