"""Data parallelism without breaking the tie: DDP (each process a full replica) or FSDP2.

FSDP2 (``torch.distributed.fsdp.fully_shard``) shards every parameter's rows across the
processes and gathers a group's parameters just before the group runs. A tie survives only if
its two uses are in ONE group: since torch 2.13 a Parameter managed by two groups raises
"shared with a parameter already managed by another FSDP group", and before that it silently
never updated part of the last rank's rows (pytorch #176076). So the groups are: each
transformer block, and one holding ``embed_tokens`` (= ``lm_head``) and the final norm. In
tinylm's own sharding that is the root, which keeps everything else, as torchtitan does.
accelerate (1.15) makes [norm, embed_tokens, lm_head] a group of their own. Either way the tie
is in one group. :func:`check_grouping` proves it after wrapping, whoever wrapped, by
comparing the FSDP group of each of the tie's uses.

Who wraps:
- on CUDA with several processes, accelerate, through ``FullyShardedDataParallelPlugin``
  (fsdp_version=2, one group per :class:`~tinylm.model.gpt.Block`), which :func:`make_plugin`
  builds, so the same launch command works with or without an FSDP accelerate config;
- everywhere else (CPU, where accelerate ignores its FSDP plugin and silently gives DDP, and
  one process) :func:`shard` applies ``fully_shard`` itself on an explicit device mesh.
Asking for fsdp2 and getting anything else is a :class:`ParallelError`, never a fallback.

``dp_replicate`` > 1 is HSDP: the processes form ``dp_replicate`` replica groups, each sharding
the model ``processes / dp_replicate`` ways (a 2-D mesh: replicate x shard).

The model stays parallelism-free (torchtitan's rule): everything here acts on it from outside.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn

from tinylm.sharing.tying import check_ties, tied_groups

STRATEGIES = ("ddp", "fsdp2")


class ParallelError(RuntimeError):
    """The requested parallelism cannot run as asked (never silently replaced by another)."""


@dataclass
class ParallelConfig:
    strategy: str = "ddp"  # "ddp": each process a full replica; "fsdp2": each process a shard
    dp_replicate: int = 1  # fsdp2 only: replica groups (HSDP); 1 = shard across all processes
    reshard_after_forward: bool = True  # fsdp2: free gathered weights after forward (ZeRO-3 memory)
    # A collective that waits this long for a rank stops the run, naming the rank (timeout.py):
    # long enough for a slow checkpoint save or eval on one rank, far shorter than gloo's 30 min.
    timeout_s: float = 300.0

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"parallel.strategy={self.strategy!r}: expected one of {', '.join(STRATEGIES)}")
        if self.dp_replicate < 1:
            raise ValueError(f"parallel.dp_replicate={self.dp_replicate}: expected >= 1")
        if not self.timeout_s > 0:
            raise ValueError(f"parallel.timeout_s={self.timeout_s}: expected seconds > 0")


def accelerate_wraps(cfg: ParallelConfig, num_processes: int) -> bool:
    """Whether accelerate applies FSDP2 (CUDA, several processes) rather than :func:`shard`."""
    return cfg.strategy == "fsdp2" and torch.cuda.is_available() and num_processes > 1


def make_plugin(cfg: ParallelConfig, num_processes: int):
    """accelerate's FSDP2 plugin for :func:`accelerate_wraps` runs, else None."""
    if not accelerate_wraps(cfg, num_processes):
        return None
    if cfg.dp_replicate > 1:
        raise ParallelError("parallel.dp_replicate > 1 (HSDP) is applied by tinylm's own "
                            "sharding only; on several GPUs use dp_replicate=1")
    return fsdp2_plugin(cfg)


def fsdp2_plugin(cfg: ParallelConfig):
    """The FSDP2 plugin tinylm hands accelerate: one group per Block, full state dicts
    (tinylm saves its own model.safetensors), and no RAM-efficient loading, whose meta-device
    path unties (accelerate #3668)."""
    from accelerate import FullyShardedDataParallelPlugin

    return FullyShardedDataParallelPlugin(
        fsdp_version=2, auto_wrap_policy="transformer_based_wrap",
        transformer_cls_names_to_wrap=["Block"], reshard_after_forward=cfg.reshard_after_forward,
        state_dict_type="FULL_STATE_DICT", cpu_ram_efficient_loading=False)


def ensure_process_group(device: torch.device) -> None:
    """FSDP2 needs a process group even for one process; accelerate makes none then."""
    if not dist.is_initialized():
        store = dist.HashStore()
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=store,
                                rank=0, world_size=1)


def device_mesh(device: torch.device, cfg: ParallelConfig):
    """1-D (shard) mesh over all processes, or 2-D (replicate, shard) for HSDP."""
    from torch.distributed.device_mesh import init_device_mesh

    world = dist.get_world_size()
    if world % cfg.dp_replicate:
        raise ParallelError(f"parallel.dp_replicate={cfg.dp_replicate} does not divide the "
                            f"{world} processes")
    if cfg.dp_replicate == 1:
        return init_device_mesh(device.type, (world,), mesh_dim_names=("shard",))
    return init_device_mesh(device.type, (cfg.dp_replicate, world // cfg.dp_replicate),
                            mesh_dim_names=("replicate", "shard"))


def shard(model: nn.Module, mesh, cfg: ParallelConfig) -> nn.Module:
    """Apply FSDP2 in place: one group per block, then the root (embedding = head, norm)."""
    from torch.distributed.fsdp import fully_shard

    for layer in dict.fromkeys(model.layers):  # a block shared across depth: one group, once
        fully_shard(layer, mesh=mesh, reshard_after_forward=cfg.reshard_after_forward)
    fully_shard(model, mesh=mesh, reshard_after_forward=cfg.reshard_after_forward)
    check_grouping(model)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The model under DDP's ``module`` and torch.compile's ``_orig_mod`` (FSDP2 wraps in place)."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(unwrap(model), FSDPModule)


def _group_of(root: nn.Module, param_name: str):
    """The FSDP group (its state object) that manages a parameter: that of the nearest
    FSDP-wrapped module at or above the parameter's module."""
    from torch.distributed.fsdp import FSDPModule

    parts = param_name.split(".")[:-1]
    for i in range(len(parts), -1, -1):
        module = root.get_submodule(".".join(parts[:i]))
        if isinstance(module, FSDPModule):
            return module._get_fsdp_state()
    return None


def _members(root: nn.Module, state) -> list[str]:
    from torch.distributed.fsdp import FSDPModule

    return [n or "root" for n, m in root.named_modules()
            if isinstance(m, FSDPModule) and m._get_fsdp_state() is state]


def check_grouping(model: nn.Module) -> None:
    """Raise unless the model is FSDP2-wrapped as tinylm requires: each block its own group
    (ParallelError), and each tie still ONE Parameter, a DTensor. A grouping that splits a tie's
    uses is caught by the tie check: torch 2.13 then gives each group its own sharded copy
    (TieError, tested), where older versions left some rows never updated."""
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    root = unwrap(model)
    if not isinstance(root, FSDPModule):
        raise ParallelError(f"parallel.strategy=fsdp2 but the model is {type(root).__name__}, "
                            "not FSDP2-sharded")
    unsharded = [f"layers.{i}" for i, b in enumerate(root.layers) if not isinstance(b, FSDPModule)]
    if unsharded:
        raise ParallelError(f"fsdp2: blocks {unsharded} are not their own FSDP group")
    check_ties(root)
    for group in tied_groups(root):
        p = root.get_parameter(group[0])
        if not isinstance(p, DTensor):
            raise ParallelError(f"fsdp2: tied {group} is a {type(p).__name__}, not a sharded DTensor")


def tie_group_label(model: nn.Module) -> str:
    """Where the tied matrix is sharded, e.g. ``root[embed_tokens=lm_head, norm]``."""
    root = unwrap(model)
    groups = tied_groups(root)
    if not groups:
        return "no ties"
    state = _group_of(root, groups[0][0])
    tie = "=".join(n.rsplit(".", 1)[0] for n in groups[0])
    if state is root._get_fsdp_state():
        return f"root[{tie}, norm]"
    return f"one group [{', '.join(_members(root, state))}]"


def strategy_line(cfg: ParallelConfig, acc) -> str:
    """What will really run, for the trainer's first log line, or a ParallelError: asking for
    one strategy and getting another is never silent (an FSDP accelerate config with
    parallel.strategy=ddp, or an fsdp2 run that accelerate would not shard)."""
    from accelerate.utils import DistributedType

    fsdp = acc.distributed_type == DistributedType.FSDP
    if cfg.strategy == "ddp":
        if fsdp:
            raise ParallelError("the accelerate launch config asks for FSDP but "
                                "parallel.strategy=ddp; set parallel.strategy=fsdp2, or "
                                "launch without the FSDP config")
        return (f"strategy ddp ({acc.distributed_type.value})" if acc.num_processes > 1
                else "strategy ddp (single process: nothing to replicate)")
    if accelerate_wraps(cfg, acc.num_processes):
        if not fsdp or getattr(acc.state.fsdp_plugin, "fsdp_version", 1) != 2:
            raise ParallelError(f"parallel.strategy=fsdp2 but accelerate set up "
                                f"{acc.distributed_type.value}, not FSDP2")
        return "strategy fsdp2 (accelerate's FSDP plugin, one group per block + root)"
    return (f"strategy fsdp2 (tinylm's fully_shard on a {acc.device.type} mesh, "
            f"dp_replicate={cfg.dp_replicate})")


def wrap(raw: nn.Module, acc, cfg: ParallelConfig,
         build_optimizers: Callable[[nn.Module], list], compile_blocks: bool = False
         ) -> tuple[nn.Module, list]:
    """(model, optimizers) ready to train. DDP, and FSDP2 on several GPUs, go through
    ``acc.prepare``; other FSDP2 runs (CPU, where accelerate would silently give DDP, and one
    process) are sharded here. Optimizers are built on the parameters the model trains with
    (FSDP2 replaces them by sharded DTensors): ``build_optimizers(model)`` is the trainer's.
    ``compile_blocks`` compiles each block before sharding (torchtitan's order); elsewhere
    ``acc.prepare`` compiles. Every path ends with the tie checked."""
    if cfg.strategy == "ddp" or accelerate_wraps(cfg, acc.num_processes):
        model, *optimizers = acc.prepare(raw, *build_optimizers(raw))
        if cfg.strategy == "fsdp2":
            check_grouping(model)
        check_ties(model)  # wrapping (DDP, compile) must keep the tie, or we stop here
        return model, optimizers
    ensure_process_group(acc.device)
    raw.to(acc.device)
    if compile_blocks:  # per block, before sharding (torchtitan's order)
        for layer in dict.fromkeys(raw.layers):  # each unique block once
            layer.compile()
    shard(raw, device_mesh(acc.device, cfg), cfg)
    optimizers = acc.prepare(*build_optimizers(raw))
    return raw, list(optimizers) if isinstance(optimizers, (list, tuple)) else [optimizers]


def describe(model: nn.Module, num_processes: int) -> str:
    """What really runs, read from the wrapped model (not the config), for the log."""
    if not is_sharded(model):
        return "ddp" if num_processes > 1 else "single process"
    p = next(unwrap(model).parameters())
    mesh, shape = p.device_mesh, tuple(p.device_mesh.shape)
    kind = "hsdp" if mesh.ndim == 2 else "fsdp2"
    layout = f"{shape[0]} replica(s) x {shape[1]} shard(s)" if mesh.ndim == 2 else f"{shape[0]} shard(s)"
    layers = unwrap(model).layers
    blocks = f"{len(set(map(id, layers)))} blocks" + (
        f" (run at {len(layers)} depths)" if len(set(map(id, layers))) < len(layers) else "")
    return f"{kind} ({layout}; groups: {blocks} + {tie_group_label(model)})"


def full_state_dict(model: nn.Module, keep: bool = True) -> dict[str, torch.Tensor]:
    """The model's state dict with whole tensors, on the CPU, or {} unless ``keep`` (only the
    process that writes the file needs it). Collective under FSDP2: every process must call
    it, each sharded tensor is gathered once, and tied names share the one gathered tensor
    (so the tie is stored once)."""
    from torch.distributed.tensor import DTensor

    gathered: dict[int, torch.Tensor | None] = {}
    out = {}
    for name, t in unwrap(model).state_dict(keep_vars=True).items():
        if id(t) not in gathered:  # the same order on every process: the same collectives
            full = t.full_tensor() if isinstance(t, DTensor) else t
            gathered[id(t)] = full.detach().cpu() if keep else None
        if keep:
            out[name] = gathered[id(t)]
    return out
