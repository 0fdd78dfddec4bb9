"""A process group restarted by the launcher (``--max_restarts``) that cannot meet its dead self.

torch elastic's static rendezvous (``accelerate launch``'s default, ``rdzv_backend: static``)
creates ONE TCPStore in the agent and hands it to every attempt (torch 2.13,
``static_tcp_rendezvous.py``), while the ranks' side (``rendezvous.py``) assumes "a new TCPStore
for every retry, so no prefix for each attempt". So a restarted group finds the dead group's
keys still there: gloo's pair addresses (NCCL's unique id likewise). A rank that reads them
before its new peer overwrites them connects to a port nobody listens on, and retries until
the process-group timeout: measured here, 2 of 3 restarted 2-process CPU launches hung or
failed with ``timed out connecting: Connection refused``.

:func:`init_restarted_group` initializes the group itself for attempts after the first, on a
prefix of the agent's store that names the attempt, before accelerate would; accelerate then
uses the group it finds. The first attempt, and launchers that give each attempt a new store
(``--rdzv_backend c10d``, ``torchrun --standalone``), are left alone.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist


def init_restarted_group(timeout_s: float) -> bool:
    """Create the default process group on ``tinylm/attempt_<N>/`` of the agent's store when
    this is restart N >= 1 of a group whose agent hosts the store; True if it did."""
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    if attempt == 0 or not agent_store or dist.is_initialized():
        return False
    timeout = timedelta(seconds=timeout_s)
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                          is_master=False, timeout=timeout)
    backend = "gloo"
    if torch.cuda.is_available():  # accelerate's choice for FSDP's full state dicts, a superset
        backend = "cuda:nccl,cpu:gloo"
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))  # one GPU per local rank
    dist.init_process_group(backend, store=dist.PrefixStore(f"tinylm/attempt_{attempt}", store),
                            rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]),
                            timeout=timeout)
    return True
