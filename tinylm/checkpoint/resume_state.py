"""What a resume needs besides the weights: optimizer state and each process's RNG, and the
rule for what counts as the same run (:func:`require_same_run`).

The optimizer state is stored in one form whatever the parallelism, so a run can resume under
another strategy (DDP <-> FSDP2) or process count: torch's distributed state-dict API gathers
it into full tensors keyed by parameter name (``embed_tokens.weight``, not a position in a
param list, not a shard), and on load scatters it back into whatever layout the new run has
(plain tensors for DDP, this process's DTensor shards for FSDP2). The file is safetensors
(no pickle): ``optimizer.safetensors`` holds ``state/<param name>/<key>`` tensors, and its
header the param groups (hyperparameters, parameter names) as JSON. The tied matrix has
one state, under its one name.

RNG states (python, numpy, torch, CUDA; one file per process) are :mod:`tinylm.checkpoint.rng`'s,
without pickle. A resume with another process count has no RNG file for new ranks: it says
so and goes on (dropout masks then differ from an uninterrupted run; nothing else draws
random numbers during training). tinylm 0.1's ``optimizer.bin`` is pickle: read only when
trusted (``checkpoint.trust_pickle``), see :func:`tinylm.checkpoint.rng.require_pickle_trust`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from tinylm.checkpoint.format import CheckpointError, read_config, read_trainer_state
from tinylm.checkpoint.rng import require_pickle_trust
from tinylm.common.atomic import atomic_path
from tinylm.common.safefile import check_header
from tinylm.distributed.parallel import is_sharded, unwrap

OPTIMIZER_FILE = "optimizer.safetensors"
OPTIMIZER_FORMAT = "tinylm-optimizer-1"
_OLD_OPTIMIZER_FILE = "optimizer.bin"  # accelerate's, before tinylm-optimizer-1


def _raw(optimizers: list) -> list[torch.optim.Optimizer]:
    return [getattr(o, "optimizer", o) for o in optimizers]  # accelerate's wrapper


def optimizer_state(model: torch.nn.Module, optimizers: list) -> dict:
    """The full, name-keyed optimizer state (collective under FSDP2); complete on the main
    process, empty elsewhere."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(unwrap(model), _raw(optimizers),
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def write_optimizer(state: dict, path: Path) -> None:
    """``state`` (from :func:`optimizer_state`) as safetensors, atomically."""
    tensors, scalars = {}, {}
    for name, entries in state["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state/{name}/{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{name}/{key}"] = value
    meta = {"format": OPTIMIZER_FORMAT, "param_groups": json.dumps(state["param_groups"]),
            "scalars": json.dumps(scalars)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def read_optimizer(path: Path) -> dict:
    """The state :func:`write_optimizer` wrote; never unpickles anything."""
    try:
        check_header(path)
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != OPTIMIZER_FORMAT:
                raise CheckpointError(f"{path}: format {meta.get('format')!r}, expected {OPTIMIZER_FORMAT}")
            state: dict[str, dict] = {}
            for key in f.keys():
                _, name, entry = key.split("/", 2)
                state.setdefault(name, {})[entry] = f.get_tensor(key)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: corrupt or unreadable optimizer state ({e})") from None
    for key, value in json.loads(meta["scalars"]).items():
        name, entry = key.split("/", 1)
        state.setdefault(name, {})[entry] = value
    groups = json.loads(meta["param_groups"])
    for g in groups:  # JSON has no tuples; torch's optimizers unpack these as tuples
        for k, v in g.items():
            if k != "params" and isinstance(v, list):
                g[k] = tuple(v)
    return {"state": state, "param_groups": groups}


def load_optimizer(model: torch.nn.Module, optimizers: list, state_dir: Path,
                   trust_pickle: bool = False) -> None:
    """Put the saved optimizer state into this run's optimizers, in this run's layout.
    Checkpoints from before this format (accelerate's pickled ``optimizer.bin``, position-
    keyed) load into an unsharded run with the same optimizers only."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    path = state_dir / OPTIMIZER_FILE
    if not path.is_file():
        return _load_old_optimizer(model, optimizers, state_dir, trust_pickle)
    state = read_optimizer(path)
    saved = {n for g in state["param_groups"] for n in g["params"]}
    have = {n for n, _ in unwrap(model).named_parameters()}
    if saved != have:
        raise CheckpointError(f"{path}: optimizer state for {len(saved)} parameters does not fit "
                             f"this model's {len(have)} (e.g. {sorted(saved ^ have)[:2]}); resume with "
                             "the same model and optim.name, or use checkpoint.init_from")
    try:
        set_optimizer_state_dict(unwrap(model), _raw(optimizers), state,
                                 options=StateDictOptions(full_state_dict=True))
    except (KeyError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: does not fit this run's optimizers ({e}); resume with the "
                             "same optim.name, or use checkpoint.init_from to keep the weights only") from None


def _load_old_optimizer(model: torch.nn.Module, optimizers: list, state_dir: Path,
                        trust_pickle: bool) -> None:
    files = [state_dir / (_OLD_OPTIMIZER_FILE if i == 0 else f"optimizer_{i}.bin")
             for i in range(len(optimizers))]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise CheckpointError(f"{missing[0]}: no optimizer state in {state_dir} ({OPTIMIZER_FILE} "
                             "or accelerate's optimizer.bin); resume from another checkpoint or "
                             "use checkpoint.init_from to keep the weights only")
    require_pickle_trust(files[0], trust_pickle, "optimizer state", "resume from a newer checkpoint "
                         "or keep the weights only with checkpoint.init_from")
    if is_sharded(model):
        raise CheckpointError(f"{files[0]}: a checkpoint of tinylm before the strategy-free "
                             "optimizer format resumes under parallel.strategy=ddp only; resume "
                             "with ddp, save, then switch to fsdp2")
    for opt, f in zip(_raw(optimizers), files):
        opt.load_state_dict(torch.load(f, map_location="cpu", weights_only=True))


def require_same_data(ckpt: Path, fingerprint: str, allow_change: bool,
                      say: Callable[[str], None]) -> bool:
    """The resume trains on the data the checkpoint was trained on: the store manifest's
    fingerprint (a hash of every shard's sha256, the splits and the tokenizer) must match,
    or ``checkpoint.allow_data_change`` says to go on anyway (said in the log). Returns
    whether the data is the same (a changed one cannot resume its data position exactly)."""
    saved = read_config(ckpt).get("data_fingerprint")
    if saved is None:  # tinylm 0.2 recorded none: nothing to compare
        say(f"{ckpt}: records no data fingerprint (an older tinylm); the data is not checked")
        return True
    if saved == fingerprint:
        return True
    what = (f"the data changed since {ckpt} was saved (fingerprint {saved} -> {fingerprint}: "
            "the files under data.source, the tokenizer or the split differ)")
    if not allow_change:
        raise CheckpointError(f"{what}; set checkpoint.allow_data_change=true to continue anyway")
    say(f"warning: {what}; continuing because checkpoint.allow_data_change=true")
    return False


def require_same_run(ckpt: Path, cfg, num_processes: int,
                     say: Callable[[str], None]) -> bool:
    """A resume continues the run it says it continues, or says why not, in one line.
    Each optimizer step must see the same blocks of the same data: refused are another
    block size or data.source, and another global batch (processes x batch_size x
    grad_accum sequences per step). Within one global batch the process count may change
    (N to M: weights, optimizer state, step and data position carry over; a resume
    under another parallel.strategy too). Returns whether the process count is the same
    (the RNG files are per process)."""
    saved, data_pos = read_config(ckpt).get("train", {}), read_trainer_state(ckpt)["data"]
    o = cfg.optim
    accum_before = saved.get("optim", {}).get("grad_accum", o.grad_accum)
    procs_before = data_pos.get("world_size")
    now = {"model.block_size": cfg.model.block_size, "data.source": cfg.data.source,
           "global batch": num_processes * o.batch_size * o.grad_accum}
    before = {"model.block_size": data_pos.get("block_size"),
              "data.source": saved.get("data", {}).get("source", cfg.data.source),
              "global batch": procs_before * data_pos.get("batch_size") * accum_before}
    for key, value in now.items():
        if before[key] != value:
            raise CheckpointError(
                f"{ckpt}: cannot resume with {key}={value}: the checkpoint was trained with "
                f"{key}={before[key]}" + (
                    f" ({procs_before} process(es) x batch_size {data_pos.get('batch_size')} x "
                    f"grad_accum {accum_before}); choose optim.batch_size and grad_accum so "
                    f"that {num_processes} process(es) x batch_size x grad_accum = "
                    f"{before[key]}"
                    if key == "global batch" else f"; resume with the same {key}") +
                ", or start a new run_dir with checkpoint.init_from to keep the weights only")
    if procs_before != num_processes:
        say(f"resuming a {procs_before}-process run with {num_processes}: same global batch, "
            "so the same data per step; the random states are per process and are not "
            "restored (only dropout draws from them)")
    return procs_before == num_processes
