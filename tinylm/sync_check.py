"""Cross-process check that every tied Parameter and its gradient agree on all ranks: identical
where ranks hold copies (DDP, HSDP replicas), tiling the full tensor where they hold shards (FSDP2).

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


def _layout(t: torch.Tensor) -> tuple[int, int, int]:
    """(rows held here, shard index, replica index) of a parameter or gradient on this process:
    a plain tensor is all rows of shard 0, with this process its own replica (DDP); an FSDP2
    DTensor holds one row-shard (its coordinate on the mesh's Shard dimension) and, under
    HSDP, sits in the replica group of its coordinate on the Replicate dimension."""
    from torch.distributed.tensor import DTensor, Replicate, Shard

    if not isinstance(t, DTensor):
        return t.shape[0] if t.dim() else 1, 0, -1
    coord = t.device_mesh.get_coordinate() or [0] * t.device_mesh.ndim
    shard = replica = 0
    for dim, placement in enumerate(t.placements):
        if isinstance(placement, Shard):
            if placement.dim != 0:
                raise TiedSyncError(f"unexpected placement {placement}: tinylm shards rows (dim 0)")
            shard = coord[dim]
        elif isinstance(placement, Replicate):
            replica = coord[dim]
    return t.to_local().shape[0], shard, replica


def local_digests(model: nn.Module) -> tuple[list[str], list[int], torch.Tensor]:
    """(group labels, full row counts, int64 tensor (groups, 7)): for the param and for the
    grad, the digest of what this process holds and its row count (-1: no gradient), then the
    shard and replica index."""
    from torch.distributed.tensor import DTensor

    groups = tied_groups(model)
    params = dict(model.named_parameters(remove_duplicate=False))
    labels, full_rows, rows = ["=".join(g) for g in groups], [], []
    for g in groups:
        p = params[g[0]]
        local = p.to_local() if isinstance(p, DTensor) else p
        grad = p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad
        n, shard, replica = _layout(p)
        rows.append([tensor_digest(local), tensor_digest(grad), n,
                     -1 if grad is None else (grad.shape[0] if grad.dim() else 1), shard, replica])
        full_rows.append(p.shape[0] if p.dim() else 1)
    return labels, full_rows, torch.tensor(rows, dtype=torch.int64).reshape(len(groups), 6)


def _compare(label: str, table: list[list[int]], full: int) -> list[str]:
    """What disagrees in one group's table (one row per rank: param digest, grad digest, param
    rows, grad rows, shard, replica): replicas of a shard must be identical, and each
    replica's shards must tile the full tensor, for the parameter and for its gradient."""
    bad = []
    replicas = sorted({r[5] if r[5] >= 0 else rank for rank, r in enumerate(table)})
    shards = sorted({r[4] for r in table})
    for col, what in ((0, "param"), (1, "grad")):
        for shard in shards:  # same shard on every replica: same bytes
            ranks = [rank for rank, r in enumerate(table) if r[4] == shard]
            odd = [rank for rank in ranks if table[rank][col] != table[ranks[0]][col]]
            if odd:
                where = f" shard {shard}" if len(shards) > 1 else ""
                bad.append(f"{label} {what}{where} differs on rank(s) {odd} vs rank {ranks[0]}")
    for replica in replicas:  # shards tile the rows: no gap, no overlap, no missing gradient
        ranks = [rank for rank, r in enumerate(table) if (r[5] if r[5] >= 0 else rank) == replica]
        for col, what in ((2, "param"), (3, "grad")):
            missing = [rank for rank in ranks if table[rank][col] < 0]
            if missing:
                bad.append(f"{label} {what}: no gradient on rank(s) {missing}: their rows "
                           "would not be updated")
            elif sum(table[rank][col] for rank in ranks) != full:
                held = {rank: table[rank][col] for rank in ranks}
                bad.append(f"{label} {what}: shards hold {held} rows on ranks, not the "
                           f"{full} rows of the full tensor")
    return bad


def check_tied_sync(model: nn.Module, accelerator) -> str:
    """Raise TiedSyncError unless all ranks agree; returns a one-line summary for the log.

    What must agree: under DDP every rank holds the whole tied Parameter and gradient, so
    they are byte-identical everywhere. Under FSDP2 each rank holds a row-shard by design:
    the shards of each replica group must tile the full tensor (every row held exactly once,
    each with a gradient: the pytorch #176076 failure left some never updated), and ranks
    holding the same shard in different replica groups (HSDP) must be byte-identical.
    Every rank takes part (the gather is collective) and every rank raises on a mismatch, so
    no process is left waiting in a later collective.
    """
    check_ties(model)  # each rank: declared ties intact, no fake ties
    labels, full_rows, local = local_digests(model)
    gathered = accelerator.gather(local.to(accelerator.device)[None]).cpu()  # (world, groups, 6)
    world = gathered.shape[0]
    bad = []
    for gi, label in enumerate(labels):
        bad += _compare(label, gathered[:, gi].tolist(), full_rows[gi])
    if bad:
        raise TiedSyncError(f"tied sync check failed across {world} processes: " + "; ".join(bad))
    shards = len({int(s) for s in gathered[:, :, 4].flatten()}) if labels else 1
    if shards == 1:
        return f"{len(labels)} tie group(s), param+grad identical on {world} process(es)"
    replicas = world // shards
    return (f"{len(labels)} tie group(s), param+grad shards tile the full tensor ({shards} "
            f"shards) and agree across {replicas} replica(s) on {world} process(es)")


class SyncChecker:
    """The trainer's tied-sync check: on the first step of a run (or of a resume) and every
    ``sync_check.interval`` steps; 0 turns it off."""

    def __init__(self, interval: int, first_step: int) -> None:
        self.interval, self.first_step = interval, first_step

    def due(self, step: int) -> bool:
        return bool(self.interval) and (step == self.first_step or step % self.interval == 0)
