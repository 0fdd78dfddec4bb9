"""Each process's random state in a checkpoint, without pickle.

A checkpoint directory from someone else is untrusted input, and ``torch.load`` had known
bypasses of ``weights_only`` before torch 2.10 (CVE-2025-32434, CVE-2026-24747). So the state
is tensors and JSON in safetensors, one file per process (``state/rng_<rank>.safetensors``):

- torch's CPU generator and each CUDA device's (uint8 tensors);
- numpy's MT19937 keys (a uint32 tensor) and the rest of its state (JSON);
- Python's ``random`` state (JSON: 625 integers);
- the fp16 grad scaler's state, when there is one (JSON).

Checkpoints of tinylm 0.1 hold accelerate's ``random_states_<rank>.pkl`` (and ``scaler.pt``)
instead. They are read only with ``checkpoint.trust_pickle=true`` (and torch >= 2.10);
otherwise the resume is refused with one line that says how to go on: without the RNG
(``checkpoint.restore_rng=false``; only dropout draws from it during training).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from tinylm.checkpoint.format import CheckpointError
from tinylm.common.atomic import atomic_path
from tinylm.common.safefile import check_header

RNG_FORMAT = "tinylm-rng-1"
PICKLE_FLOOR = (2, 10)  # torch versions before this had weights_only bypasses


def rng_file(state_dir: Path, process_index: int) -> Path:
    return state_dir / f"rng_{process_index}.safetensors"


def legacy_rng_file(state_dir: Path, process_index: int) -> Path:
    return state_dir / f"random_states_{process_index}.pkl"  # accelerate's, tinylm 0.1


def save_rng(state_dir: Path, accelerator) -> None:
    """This process's random state (and the grad scaler's) into its own file, atomically."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors = {"torch": torch.get_rng_state(), "numpy_keys": torch.from_numpy(keys.astype(np.int64))}
    if torch.cuda.is_available():
        tensors.update({f"cuda_{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    scaler = getattr(accelerator, "scaler", None)
    meta = {"format": RNG_FORMAT, "python": [version, list(mt), gauss],
            "numpy": [kind, int(pos), int(has_gauss), float(cached)],
            "scaler": scaler.state_dict() if scaler is not None else None}
    with atomic_path(rng_file(state_dir, accelerator.process_index)) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", "tinylm_rng": json.dumps(meta)})


def read_rng(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, JSON state) of one process's RNG file; CheckpointError naming it otherwise."""
    try:
        check_header(path)
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["tinylm_rng"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        if meta.get("format") != RNG_FORMAT or "torch" not in tensors:
            raise ValueError(f"format {meta.get('format')!r}")
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing; this process's random state cannot be restored "
                              "(resume with checkpoint.restore_rng=false to go on without it)") from None
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: unreadable RNG state ({type(e).__name__}: {e})") from None
    return tensors, meta


def _restore(tensors: dict[str, torch.Tensor], meta: dict, accelerator) -> None:
    version, mt, gauss = meta["python"]
    random.setstate((version, tuple(mt), gauss))
    kind, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, tensors["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda_"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[:torch.cuda.device_count()])
    scaler = getattr(accelerator, "scaler", None)
    if scaler is not None and meta.get("scaler"):
        scaler.load_state_dict(meta["scaler"])


def require_pickle_trust(path: Path, trust_pickle: bool, what: str, instead: str) -> None:
    """A tinylm 0.1 pickle file is read only when trusted, and only by a torch whose
    ``weights_only`` loader has no known bypass; else one line saying how to go on."""
    if not trust_pickle:
        raise CheckpointError(f"{path}: {what} in pickle format (tinylm 0.1); pickle can run code, "
                              f"so it is not read: {instead}, or, if you trust this checkpoint, "
                              "checkpoint.trust_pickle=true")
    if tuple(int(x) for x in torch.__version__.split(".")[:2]) < PICKLE_FLOOR:
        raise CheckpointError(f"{path}: checkpoint.trust_pickle needs torch >= 2.10 (its "
                              f"weights_only loader has no known bypass); this is {torch.__version__}")


def check_rng(state_dir: Path, process_index: int, trust_pickle: bool) -> None:
    """Before anything is loaded: this process's RNG file is there and readable (or, for a
    tinylm 0.1 checkpoint, may be read)."""
    path = rng_file(state_dir, process_index)
    legacy = legacy_rng_file(state_dir, process_index)
    if not path.is_file() and legacy.is_file():
        require_pickle_trust(legacy, trust_pickle, "RNG state",
                             "resume without it with checkpoint.restore_rng=false (only dropout "
                             "draws from it)")
        return
    read_rng(path)


def load_rng(state_dir: Path, accelerator, trust_pickle: bool) -> None:
    """Restore this process's random state (see the module docstring for tinylm 0.1's)."""
    path = rng_file(state_dir, accelerator.process_index)
    legacy = legacy_rng_file(state_dir, accelerator.process_index)
    if not path.is_file() and legacy.is_file():
        check_rng(state_dir, accelerator.process_index, trust_pickle)
        _restore_legacy(legacy)
        return
    _restore(*read_rng(path), accelerator)


def _restore_legacy(path: Path) -> None:
    """A trusted tinylm 0.1 (accelerate) RNG pickle, through torch's ``weights_only`` loader.
    Read here, not by accelerate's ``load_accelerator_state``, which logs a failure at INFO
    level and goes on with other random numbers."""
    from accelerate.utils import load  # (0.1 checkpoints only: torch.load, weights_only=True)

    try:
        states = load(path, map_location="cpu")
        random.setstate(states["random_state"])
        np.random.set_state(states["numpy_random_seed"])
        torch.set_rng_state(states["torch_manual_seed"])
        if torch.cuda.is_available() and "torch_cuda_manual_seed" in states:
            torch.cuda.set_rng_state_all(states["torch_cuda_manual_seed"])
    except Exception as e:  # noqa: BLE001 - whatever is wrong with it, it is not restored
        raise CheckpointError(f"{path}: unreadable RNG state ({type(e).__name__}); resume "
                              "without it with checkpoint.restore_rng=false") from None
