"""A rank that stops answering: the process group's timeout, and which rank it was.

Without a timeout of its own, a run with a hung rank (a deadlock, a stuck device, a paused VM)
waits for the backend's default (30 minutes on gloo, 10 on NCCL) and then dies with a
transport message that names no rank. tinylm gives the process group ``parallel.timeout_s``
(through accelerate's ``InitProcessGroupKwargs``). When a collective times out, every rank
still answering writes a key in the store the ranks rendezvoused through (the launcher
serves it under torch elastic, so it outlives any rank), waits a moment for the others, and
names the ranks that never wrote: :class:`RankTimeout`, one line, exit status 1, nothing saved.
The launcher then stops the rest (SIGTERM, then SIGKILL after its 30 s grace).

On NCCL the timeout is enforced by torch's watchdog thread, which aborts the process
(``TORCH_NCCL_ASYNC_ERROR_HANDLING``) rather than raising: the run still stops after
``parallel.timeout_s``, but the line naming the rank comes from gloo runs only.
"""

from __future__ import annotations

import time
from datetime import timedelta

import torch.distributed as dist


class RankTimeout(RuntimeError):
    """A collective waited ``parallel.timeout_s`` for ranks that never came; nothing was saved."""


def process_group_kwargs(timeout_s: float):
    """The accelerate kwargs handler that gives the process group ``timeout_s``."""
    from accelerate.utils import InitProcessGroupKwargs

    return InitProcessGroupKwargs(timeout=timedelta(seconds=timeout_s))


def is_collective_timeout(e: BaseException) -> bool:
    """gloo's timeout (``Timed out waiting 5000ms for recv operation to complete``), or a
    store wait that timed out, as opposed to a peer that died (``Connection closed by peer``)."""
    return isinstance(e, RuntimeError) and "timed out" in str(e).lower()


def silent_ranks(grace_s: float) -> list[int] | None:
    """The ranks that have not said they are answering within ``grace_s`` of this one saying
    so, or None when the store cannot be reached (its host is gone)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    prefix = "tinylm/answering/"  # a restarted group has its own store or prefix (restart.py)
    try:
        store = dist.distributed_c10d._get_default_store()
        store.set(f"{prefix}{rank}", "1")
        deadline = time.monotonic() + grace_s
        while True:
            missing = [r for r in range(world) if not store.check([f"{prefix}{r}"])]
            if not missing or time.monotonic() >= deadline:
                return missing
            time.sleep(0.2)
    except (RuntimeError, ValueError):  # DistNetworkError is a RuntimeError
        return None


def rank_timeout(timeout_s: float, step: int, last_good: object) -> RankTimeout:
    """The error for a collective that timed out at ``step``, naming the silent ranks (every
    rank that still answers waits up to a tenth of the timeout, 2-10 s, for the others)."""
    missing = silent_ranks(min(10.0, max(2.0, timeout_s / 10)))
    world = dist.get_world_size()
    who = (f"rank {', '.join(map(str, missing))} of {world}" if missing
           else f"another of the {world} ranks")
    return RankTimeout(
        f"{who} stopped answering: a collective waited parallel.timeout_s={timeout_s:g} s at "
        f"step {step} (seen by rank {dist.get_rank()}); stopped without saving. Last good "
        f"checkpoint: {last_good or 'none'}")
