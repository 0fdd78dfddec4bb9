"""Cross-process check that every tied Parameter and its gradient are identical on all ranks.

Data parallelism assumes every rank holds the same weights and applies the same all-reduced
gradient. A tie that broke on one rank, a gradient hook that ran on one rank only, or a
non-deterministic reduction breaks that assumption silently: the ranks drift apart and a
checkpoint saved from rank 0 no longer describes the model the others trained. Megatron hashes
parameters across replicas; we hash parameters AND gradients of every tie group.

Digests are exact: a BLAKE2b digest of the tensor's bytes (so a flipped bit in the last
place is caught, which a float sum could miss or collide on), truncated to 63 bits to travel as
an int64 through ``accelerator.gather`` (works on gloo and NCCL alike).

Run it after the gradients are all-reduced (after backward on a sync step) and before the
optimizer steps, so a mismatch stops the run before a corrupt update or checkpoint is made.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from tinylm.tying import check_ties, tied_groups


class TiedSyncError(RuntimeError):
    """Tied parameters or their gradients differ between processes."""


def tensor_digest(t: torch.Tensor | None) -> int:
    """63-bit BLAKE2b digest of a tensor's bytes (dtype and shape included); 0 for None."""
    if t is None:
        return 0
    t = t.detach().contiguous()
    raw = t.view(torch.uint8) if t.dtype != torch.bool else t.to(torch.uint8)
    h = hashlib.blake2b(raw.cpu().numpy().tobytes(), digest_size=8)
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    return int.from_bytes(h.digest(), "little") >> 1


def local_digests(model: nn.Module) -> tuple[list[str], torch.Tensor]:
    """(group labels, int64 tensor (groups, 2)) of parameter and gradient digests."""
    groups = tied_groups(model)
    params = dict(model.named_parameters(remove_duplicate=False))
    labels = ["=".join(g) for g in groups]
    fps = [[tensor_digest(params[g[0]]), tensor_digest(params[g[0]].grad)] for g in groups]
    return labels, torch.tensor(fps, dtype=torch.int64).reshape(len(groups), 2)


def check_tied_sync(model: nn.Module, accelerator) -> str:
    """Raise TiedSyncError unless all ranks agree; returns a one-line summary for the log.

    Every rank takes part (the gather is collective) and every rank raises on a mismatch, so
    no process is left waiting in a later collective.
    """
    check_ties(model)  # each rank: declared ties intact, no fake ties
    labels, local = local_digests(model)
    gathered = accelerator.gather(local.to(accelerator.device)[None]).cpu()  # (world, groups, 2)
    world = gathered.shape[0]
    bad = []
    for gi, label in enumerate(labels):
        for col, what in ((0, "param"), (1, "grad")):
            values = gathered[:, gi, col].tolist()
            if len(set(values)) > 1:
                odd = [r for r, v in enumerate(values) if v != values[0]]
                bad.append(f"{label} {what} differs on rank(s) {odd} vs rank 0")
    if bad:
        raise TiedSyncError(f"tied sync check failed across {world} processes: " + "; ".join(bad))
    return f"{len(labels)} tie group(s), param+grad identical on {world} process(es)"


class SyncChecker:
    """The trainer's tied-sync check: on the first step of a run (or of a resume) and every
    ``sync_check.interval`` steps; 0 turns it off."""

    def __init__(self, interval: int, first_step: int) -> None:
        self.interval, self.first_step = interval, first_step

    def due(self, step: int) -> bool:
        return bool(self.interval) and (step == self.first_step or step % self.interval == 0)
