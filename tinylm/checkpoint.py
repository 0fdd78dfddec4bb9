"""Checkpoints: safetensors weights with each tie group stored once, plus what re-creates it.

A checkpoint is a directory::

    step-<N>/
      model.safetensors    each tie group ONCE, under its source name (embed_tokens.weight)
      config.json          model config, the tie groups, the training config, step
      tokenizer.json       so evaluate/generate need nothing else
      trainer_state.json   step, data position, wandb run id (training resume only)
      state/               accelerate's optimizer, and RNG state (training resume only)

safetensors refuses tensors that share memory, and rightly: a file cannot say "these two are
one". So we drop the aliases on save, record the groups in the header and in config.json, and
re-create the ties by building the model from its config before loading. Loading checks that
the ties in the file are the ties the model has, so a tied file never silently loads as an
untied model or the reverse.

Everything is written under a temporary name and renamed into place, so a crash mid-save never
leaves a half-written checkpoint where resume would find it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from tinylm.model import GPT, GPTConfig
from tinylm.tying import check_ties, tied_groups

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
TRAINER_STATE_FILE = "trainer_state.json"
STATE_DIR = "state"
FORMAT = "tinylm-checkpoint-1"
_STEP_DIR = re.compile(r"^step-(\d+)$")
_WRAPPER_PREFIXES = ("_orig_mod.", "module.")  # torch.compile and DDP wrappers


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt, truncated or inconsistent; names the file."""


def _canonical(group: list[str]) -> str:
    """The name a tie group is stored under: a plain weight, not a parametrization alias."""
    plain = [n for n in group if ".parametrizations." not in n]
    return sorted(plain or group, key=lambda n: ("lm_head" in n, n))[0]


def weights_for_saving(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], list[list[str]]]:
    """Unique tensors by name (aliases of a tie group dropped) and the groups themselves."""
    groups = tied_groups(model)
    aliases = {n for g in groups for n in g if n != _canonical(g)}
    tensors = {n: t.detach().contiguous() for n, t in model.state_dict().items() if n not in aliases}
    return tensors, groups


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_model(model: torch.nn.Module, path: str | Path) -> None:
    """Write model.safetensors: unique tensors, tie groups in the header (atomic)."""
    path = Path(path)
    tensors, groups = weights_for_saving(model)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt", "tinylm_ties": json.dumps(groups)})
    os.replace(tmp, path)


def _strip_wrappers(name: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in _WRAPPER_PREFIXES:
            if name.startswith(p):
                name, changed = name[len(p):], True
    return name


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], list[list[str]]]:
    """Tensors and recorded tie groups of a safetensors file; never unpickles anything."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {_strip_wrappers(k): f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({e})") from None
    groups = json.loads(meta.get("tinylm_ties", "[]"))
    return tensors, [[_strip_wrappers(n) for n in g] for g in groups]


def load_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Load model.safetensors into ``model`` in place, ties included, strictly.

    The file's tie groups must equal the model's: a mismatch means the config and the file
    disagree (the transformers failure where a round trip gives a random head), so we raise.
    """
    tensors, file_groups = read_weights(path)
    model_groups = tied_groups(model)
    if sorted(map(sorted, file_groups)) != model_groups:
        raise CheckpointError(
            f"{path}: file ties {file_groups} but the model built from its config ties "
            f"{model_groups}"
        )
    for group in model_groups:
        name = _canonical(group)
        if name not in tensors:
            raise CheckpointError(f"{path}: missing tensor '{name}' (tie group {group})")
        for alias in group:
            tensors.setdefault(alias, tensors[name])
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        raise CheckpointError(f"{path}: missing tensors {missing[:5]}, unexpected {unexpected[:5]}")
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:  # shape mismatches
        raise CheckpointError(f"{path}: {str(e).splitlines()[-1].strip()}") from None
    check_ties(model, expected=model_groups)


def read_config(ckpt: str | Path) -> dict:
    path = Path(ckpt) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file (is {ckpt} a tinylm checkpoint?)")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if cfg.get("format") != FORMAT or "model" not in cfg:
        raise CheckpointError(f"{path}: not a {FORMAT} config (format={cfg.get('format')!r})")
    return cfg


def load_model(ckpt: str | Path, device: str | torch.device = "cpu") -> tuple[GPT, dict]:
    """Build the GPT a checkpoint describes and load its weights: (model in eval mode, config)."""
    cfg = read_config(ckpt)
    try:
        model_cfg = GPTConfig(**cfg["model"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{Path(ckpt) / CONFIG_FILE}: bad model config ({e})") from None
    model = GPT(model_cfg)
    load_weights(model, Path(ckpt) / MODEL_FILE)
    return model.to(device).eval(), cfg


def write_checkpoint_files(
    ckpt_dir: str | Path, model: GPT, train_config: dict, tokenizer_path: str | Path,
    trainer_state: dict | None = None, extra: dict | None = None,
) -> None:
    """Model, config and tokenizer (and trainer state) into an existing directory."""
    ckpt_dir = Path(ckpt_dir)
    save_model(model, ckpt_dir / MODEL_FILE)
    config = {"format": FORMAT, "model": model.config.to_dict(), "ties": tied_groups(model),
              "train": train_config, **(extra or {})}
    _atomic_write_text(ckpt_dir / CONFIG_FILE, json.dumps(config, indent=2))
    shutil.copyfile(tokenizer_path, ckpt_dir / TOKENIZER_FILE)
    if trainer_state is not None:
        _atomic_write_text(ckpt_dir / TRAINER_STATE_FILE, json.dumps(trainer_state, indent=2))


def read_trainer_state(ckpt_dir: str | Path) -> dict:
    path = Path(ckpt_dir) / TRAINER_STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file (checkpoint cannot resume training)")
    return json.loads(path.read_text())


def step_dirs(root: str | Path) -> list[tuple[int, Path]]:
    """Complete step-<N> checkpoint directories under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name))]
    return sorted((s, p) for s, p in found if (p / CONFIG_FILE).is_file())


def latest_checkpoint(root: str | Path) -> Path | None:
    dirs = step_dirs(root)
    return dirs[-1][1] if dirs else None


def temp_dir_for(root: str | Path, step: int) -> Path:
    """Where a checkpoint is assembled before :func:`publish` renames it into place."""
    return Path(root) / f".step-{step}.tmp"


def publish(tmp: Path, root: str | Path, step: int, keep_last: int) -> Path:
    """Rename a finished temp dir to step-<N>, then delete all but the newest ``keep_last``."""
    final = Path(root) / f"step-{step}"
    if final.exists():  # re-saving the same step (e.g. after resume): replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    if keep_last > 0:
        for _, old in step_dirs(root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def find_checkpoints(path: str | Path) -> list[Path]:
    """A checkpoint dir -> [it]; a run dir or checkpoints/ dir -> all its step dirs, in order."""
    path = Path(path)
    if (path / CONFIG_FILE).is_file():
        return [path]
    for root in (path / "checkpoints", path):
        dirs = step_dirs(root)
        if dirs:
            return [p for _, p in dirs]
    raise CheckpointError(f"{path}: not a checkpoint, a run directory, or a checkpoints/ directory")
