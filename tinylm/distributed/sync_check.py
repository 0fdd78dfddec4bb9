"""Cross-process check that every tied Parameter and its gradient agree on all ranks: identical
where ranks hold copies (DDP, HSDP replicas), tiling the full tensor where they hold shards (FSDP2).

Data parallelism assumes every rank holds the same weights and applies the same all-reduced
gradient. A tie that broke on one rank, a gradient hook that ran on one rank only, or a
non-deterministic reduction breaks that assumption silently: the ranks drift apart and a
checkpoint saved from rank 0 no longer describes the model the others trained. Megatron hashes
parameters across replicas; we hash parameters AND gradients of every tie group.

Digests are exact: any changed byte changes them (a flipped bit in the last place is caught,
which a float sum could miss or collide on). On a CPU it is a BLAKE2b digest of the tensor's
bytes; on an accelerator the bytes are first folded where they live (:func:`fold`: exact
integer sums, a flipped bit always changes them), so that 8 bytes per 64 KiB cross to the
host instead of the whole tensor: the H200 check measured 320 ms per check for gpt2-small's
tied matrix and its gradient when they were copied and hashed on the host. Truncated to 63
bits to travel as an int64 through ``accelerator.gather`` (gloo and NCCL alike).

Run it after the gradients are all-reduced (after backward on a sync step) and before the
optimizer steps, so a mismatch stops the run before a corrupt update or checkpoint is made.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import nn

from tinylm.common.checks import NON_NEGATIVE, require
from tinylm.sharing.tying import check_ties, tied_groups


class TiedSyncError(RuntimeError):
    """Tied parameters or their gradients differ between processes."""


BLOCK = 1 << 15  # 16-bit words per folded sum: (2^16 - 1) x (2^31 - 1) x 2^15 < 2^63
CHUNK = 1 << 22  # words folded at a time: bounds the int64 temporaries (32 MiB each)
_WEIGHTS: dict[torch.device, torch.Tensor] = {}


def _weights(device: torch.device) -> torch.Tensor:
    """BLOCK fixed pseudo-random weights in [1, 2^31), the same on every machine
    (a seeded CPU generator), one copy per device."""
    if device not in _WEIGHTS:
        g = torch.Generator().manual_seed(0x7117)
        _WEIGHTS[device] = torch.randint(1, 2**31 - 1, (BLOCK,), generator=g,
                                         dtype=torch.int64).to(device)
    return _WEIGHTS[device]


def fold(raw: torch.Tensor) -> torch.Tensor:
    """Exact fold of a flat uint8 tensor into int64 sums, one per BLOCK 16-bit words, computed
    on the tensor's device: sum_i w_i * word_i with position weights w_i >= 1.

    Exact because every term and every sum fits in an int64 (no overflow, no rounding), so
    the result does not depend on the order a GPU reduces in. A flipped bit moves one word by
    +-2^k and its block's sum by +-2^k x w_i != 0: always detected; other changes collide only
    if they cancel exactly under the weights."""
    if raw.numel() % 2:
        raw = torch.cat([raw, raw.new_zeros(1)])
    words, w = raw.view(torch.int16), _weights(raw.device)
    sums = []
    for start in range(0, words.numel(), CHUNK):
        x = words[start:start + CHUNK].to(torch.int64) & 0xFFFF
        if x.numel() % BLOCK:
            x = torch.cat([x, x.new_zeros(BLOCK - x.numel() % BLOCK)])
        sums.append((x.view(-1, BLOCK) * w).sum(1))
    return torch.cat(sums) if sums else raw.new_zeros(0, dtype=torch.int64)


def tensor_digest(t: torch.Tensor | None) -> int:
    """63-bit digest of a tensor's bytes (dtype and shape included); 0 for None. On a CPU the
    bytes are hashed as they are (BLAKE2b is 2-4x faster there than :func:`fold`); elsewhere
    they are folded on the device first and only the sums are hashed."""
    if t is None:
        return 0
    t = t.detach().contiguous()
    raw = (t.view(torch.uint8) if t.dtype != torch.bool else t.to(torch.uint8)).reshape(-1)
    data = raw if t.device.type == "cpu" else fold(raw).cpu()
    h = hashlib.blake2b(data.numpy().tobytes(), digest_size=8)
    h.update(f"{t.device.type == 'cpu'}{t.dtype}{tuple(t.shape)}".encode())
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


@dataclass
class SyncCheckConfig:
    interval: int = 100  # optimizer steps between checks (the first step is always checked; 0 = off)

    def __post_init__(self) -> None:
        require("sync_check", self, {"interval": NON_NEGATIVE})


class SyncChecker:
    """The trainer's tied-sync check: on the first step of a run (or of a resume) and every
    ``sync_check.interval`` steps; 0 turns it off."""

    def __init__(self, interval: int, first_step: int) -> None:
        self.interval, self.first_step = interval, first_step

    def due(self, step: int) -> bool:
        return bool(self.interval) and (step == self.first_step or step % self.interval == 0)
