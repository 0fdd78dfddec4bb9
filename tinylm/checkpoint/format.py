"""Checkpoints: what one is, how it is written, found, loaded and started from (the
trainer's saving, pruning and resuming: :mod:`tinylm.checkpoint.checkpointer`).

A checkpoint is a directory::

    step-<N>/
      model.safetensors    each tie group ONCE, under its source name (embed_tokens.weight)
      config.json          format, model config, the tie groups, the training config, step
      tokenizer.json       so evaluate/generate need nothing else
      trainer_state.json   TrainState: step, tokens, data position, tracker id (resume only)
      state/               optimizer.safetensors (full, by parameter name: any strategy or
                           process count resumes it) and each process's RNG (resume only)

safetensors refuses tensors that share memory, and rightly: a file cannot say "these two are
one". So we drop the aliases on save, record the groups in the header and in config.json, and
re-create the ties by building the model from its config before loading. Every load (resume,
evaluate, generate, ``init_from``, a teacher) checks in one place that the ties in the file are
the ties the model has, so a tied file never silently loads as an untied model or the reverse.

Everything is assembled under a temporary name and renamed into place (``tinylm.common.atomic``), so a
crash mid-save never leaves a half-written checkpoint where resume would find it.

Format 2 (this one): ``model.vocab_size`` is the tokenizer's size and the model pads its own
matrix. Format 1 stored the padded size; such checkpoints still load (their vocab_size is
read back from their tokenizer.json).
"""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from tinylm.checkpoint.manifest import MANIFEST_FILE, problems, write_manifest
from tinylm.common.atomic import atomic_dir, atomic_path, atomic_write
from tinylm.common.safefile import check_header
from tinylm.data.corpus import DataError
from tinylm.data.tokenizer import Tokenizer
from tinylm.model.config import GPTConfig, padded_vocab
from tinylm.model.gpt import GPT
from tinylm.sharing.tying import check_ties, tied_groups

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
TRAINER_STATE_FILE = "trainer_state.json"
STATE_DIR = "state"
CHECKPOINT_FORMAT = "tinylm-checkpoint-2"
ARTIFACT_MAGIC = b"TINYLMQ1"  # the first bytes of a packed artifact (tinylm pack)
_FORMAT_1 = "tinylm-checkpoint-1"  # vocab_size was the padded size
_STEP_DIR = re.compile(r"^step-(\d+)$")
_WRAPPER_PREFIXES = ("_orig_mod.", "module.")  # torch.compile and DDP wrappers


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt, truncated or inconsistent; names the file."""


# -- weights -----------------------------------------------------------------------------------

def _canonical(group: list[str]) -> str:
    """The name a tie group is stored under: a plain weight, not a parametrization alias."""
    plain = [n for n in group if ".parametrizations." not in n]
    return sorted(plain or group, key=lambda n: ("lm_head" in n, n))[0]


def weights_for_saving(model: torch.nn.Module, state: dict[str, torch.Tensor] | None = None
                       ) -> tuple[dict[str, torch.Tensor], list[list[str]]]:
    """Unique tensors by name (aliases of a tie group dropped) and the groups themselves;
    ``state`` is the model's state dict unless given (a sharded model's gathered one)."""
    groups = tied_groups(model)
    aliases = {n for g in groups for n in g if n != _canonical(g)}
    state = model.state_dict() if state is None else state
    tensors = {n: t.detach().contiguous() for n, t in state.items() if n not in aliases}
    return tensors, groups


def save_model(model: torch.nn.Module, path: str | Path,
               state: dict[str, torch.Tensor] | None = None) -> None:
    """Write model.safetensors: unique tensors, tie groups in the header (atomic)."""
    tensors, groups = weights_for_saving(model, state)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", "tinylm_ties": json.dumps(groups)})


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
        check_header(path)  # before safetensors maps or reads what its header claims
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {_strip_wrappers(k): f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({e})") from None
    groups = json.loads(meta.get("tinylm_ties", "[]"))
    return tensors, [[_strip_wrappers(n) for n in g] for g in groups]


def require_same_ties(path: Path, file_groups: list[list[str]], model: torch.nn.Module) -> None:
    """The one tie check on load: the file's groups must be the model's (a mismatch is the
    transformers failure where a round trip gives a random head)."""
    ours, theirs = tied_groups(model), sorted(map(sorted, file_groups))
    if theirs != ours:
        only_file = [g for g in theirs if g not in ours][:2]
        only_model = [g for g in ours if g not in theirs][:2]
        raise CheckpointError(f"{path}: the file ties {only_file or 'nothing more'} that the model "
                              f"built from its config does not, and the model ties "
                              f"{only_model or 'nothing more'} (model.tie_embeddings, model.layer_map)")


def load_weights(model: torch.nn.Module, path: str | Path, assign: bool = False) -> None:
    """Load model.safetensors into ``model``, ties included, strictly. ``assign=True`` makes
    the file's tensors the model's parameters (for a model built on the meta device: one copy
    of the weights in memory, not two)."""
    path = Path(path)
    tensors, file_groups = read_weights(path)
    load_tensors(model, tensors, file_groups, path, assign)


def load_tensors(model: torch.nn.Module, tensors: dict[str, torch.Tensor],
                 file_groups: list[list[str]], path: str | Path, assign: bool = False) -> None:
    """:func:`load_weights` on tensors already read (each tie group once, under its canonical
    name) from ``path`` (a model.safetensors, or a packed artifact), strictly, ties checked."""
    require_same_ties(Path(path), file_groups, model)
    model_groups = tied_groups(model)
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
        model.load_state_dict(tensors, strict=True, assign=assign)
    except RuntimeError as e:  # shape mismatches
        raise CheckpointError(f"{path}: {str(e).splitlines()[-1].strip()}") from None
    check_ties(model, expected=model_groups)


# -- config and model ------------------------------------------------------------------------

def read_json(path: Path) -> dict:
    """A JSON object from ``path``, or CheckpointError naming the file (bytes that are no UTF-8,
    such as a planted pickle, included)."""
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{path}: not JSON: byte {e.start} is not UTF-8") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got a {type(value).__name__}")
    return value


def read_config(ckpt: str | Path) -> dict:
    """config.json of a checkpoint, upgraded to the current format."""
    path = Path(ckpt) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file (is {ckpt} a tinylm checkpoint?)")
    cfg = read_json(path)
    if cfg.get("format") == _FORMAT_1 and "model" in cfg:
        return _upgrade_format_1(Path(ckpt), cfg)
    if cfg.get("format") != CHECKPOINT_FORMAT or "model" not in cfg:
        raise CheckpointError(f"{path}: not a {CHECKPOINT_FORMAT} config (format={cfg.get('format')!r})")
    return cfg


def _upgrade_format_1(ckpt: Path, cfg: dict) -> dict:
    """Format 1 stored the trainer-padded vocab; the tokenizer beside it has the real size."""
    try:
        n_tokens = Tokenizer.load(ckpt / TOKENIZER_FILE).vocab_size
    except DataError as e:
        raise CheckpointError(f"{ckpt}: format 1 checkpoint: {e}") from None
    stored = cfg["model"].get("vocab_size")
    if stored != padded_vocab(n_tokens):
        raise CheckpointError(
            f"{ckpt / CONFIG_FILE}: format 1 checkpoint with vocab_size={stored}, which is not its "
            f"tokenizer's {n_tokens} padded to 64; load it with tinylm 0.1 and re-save its "
            f"weights into a model of vocab_size={n_tokens}")
    return {**cfg, "format": CHECKPOINT_FORMAT, "model": {**cfg["model"], "vocab_size": n_tokens}}


def _gpt_config(ckpt: Path, cfg: dict) -> GPTConfig:
    try:
        return GPTConfig(**cfg["model"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{ckpt / CONFIG_FILE}: bad model config ({e})") from None


def model_config(ckpt: str | Path) -> GPTConfig:
    """The architecture a checkpoint (or a run dir's latest) holds."""
    ckpt = resolve_checkpoint(ckpt)
    return _gpt_config(ckpt, read_config(ckpt))


def load_model(ckpt: str | Path, device: str | torch.device = "cpu") -> tuple[GPT, dict]:
    """Build the GPT a checkpoint describes and load its weights: (model in eval mode, config).
    Built on the meta device and given the file's tensors: no random init, one copy."""
    ckpt = resolve_checkpoint(ckpt)
    verify_checkpoint(ckpt)
    cfg = read_config(ckpt)
    with torch.device("meta"):
        model = GPT(_gpt_config(ckpt, cfg))
    load_weights(model, ckpt / MODEL_FILE, assign=True)
    return model.to(device).eval(), cfg


def write_checkpoint(ckpt_dir: str | Path, model: GPT, train_config: dict,
                     tokenizer_path: str | Path, trainer_state: dict | None = None,
                     extra: dict | None = None, state: dict | None = None) -> None:
    """Model, config and tokenizer (and trainer state) into an existing directory; ``state``:
    the full state dict, when the model holds shards."""
    ckpt_dir = Path(ckpt_dir)
    save_model(model, ckpt_dir / MODEL_FILE, state)
    config = {"format": CHECKPOINT_FORMAT, "model": model.config.to_dict(),
              "ties": tied_groups(model), "train": train_config, **(extra or {})}
    atomic_write(ckpt_dir / CONFIG_FILE, json.dumps(config, indent=2))
    shutil.copyfile(tokenizer_path, ckpt_dir / TOKENIZER_FILE)
    if trainer_state is not None:
        atomic_write(ckpt_dir / TRAINER_STATE_FILE, json.dumps(trainer_state, indent=2))
    write_manifest(ckpt_dir)  # last: every file of the directory, the state/ of all processes too


def verify_checkpoint(ckpt: str | Path) -> None:
    """Every file of ``ckpt`` matches its manifest, or CheckpointError naming the first that
    does not; a checkpoint without a manifest (tinylm 0.1) loads with a warning."""
    found = problems(ckpt)
    if found is None:
        warnings.warn(f"{ckpt}: no {MANIFEST_FILE} (a checkpoint of tinylm 0.1): its files are "
                      "not verified", stacklevel=2)
    elif found:
        more = f" (+{len(found) - 1} more: tinylm verify {ckpt})" if len(found) > 1 else ""
        raise CheckpointError(found[0] + more)


def read_trainer_state(ckpt_dir: str | Path) -> dict:
    path = Path(ckpt_dir) / TRAINER_STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file (checkpoint cannot resume training)")
    return read_json(path)


def publish_student(out: Path, student: GPT, train_config: dict, tokenizer_path: Path,
                    extra: dict) -> None:
    """Write a student (or any untrained-here model) as a checkpoint directory ``out``, which
    must not exist or be empty; assembled aside and renamed into place."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out}: exists and is not an empty directory")
    with atomic_dir(out) as tmp:
        write_checkpoint(tmp, student, train_config, tokenizer_path, extra={"step": 0, **extra})


# -- finding checkpoints --------------------------------------------------------------------

REQUIRED_FILES = (MODEL_FILE, CONFIG_FILE, TOKENIZER_FILE)


def missing_files(ckpt: Path) -> list[str]:
    """What a checkpoint directory lacks to be complete (a step-N is only ever renamed into
    place whole, so this finds damage done by something else)."""
    return [f for f in REQUIRED_FILES if not (ckpt / f).is_file()]


def step_dirs(root: str | Path) -> list[tuple[int, Path]]:
    """Complete step-<N> checkpoint directories under ``root``, oldest first; an incomplete
    one is skipped with a warning that names what it lacks."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = sorted((int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)))
    complete = []
    for step, path in found:
        if lacking := missing_files(path):
            warnings.warn(f"{path}: incomplete checkpoint (no {', '.join(lacking)}): skipped",
                          stacklevel=2)
        else:
            complete.append((step, path))
    return complete


def latest_checkpoint(root: str | Path) -> Path | None:
    dirs = step_dirs(root)
    return dirs[-1][1] if dirs else None


def is_artifact(path: str | Path) -> bool:
    """Whether ``path`` is a packed artifact (:mod:`tinylm.checkpoint.artifact`) by its magic."""
    path = Path(path)
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(len(ARTIFACT_MAGIC)) == ARTIFACT_MAGIC


def find_checkpoints(path: str | Path) -> list[Path]:
    """A checkpoint dir or a packed artifact -> [it]; a run dir or checkpoints/ dir -> all its
    step dirs, in order."""
    path = Path(path)
    if is_artifact(path):
        return [path]
    if (path / CONFIG_FILE).is_file():
        if lacking := missing_files(path):
            raise CheckpointError(f"{path}: incomplete checkpoint (no {', '.join(lacking)})")
        return [path]
    for root in (path / "checkpoints", path):
        dirs = step_dirs(root)
        if dirs:
            return [p for _, p in dirs]
    raise CheckpointError(f"{path}: not a checkpoint, a run directory, or a checkpoints/ directory")


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint dir -> it; a run dir or checkpoints/ dir -> its latest checkpoint."""
    return find_checkpoints(path)[-1]


def resolve_resume(choice: str, ckpt_root: Path) -> Path | None:
    """``checkpoint.resume``: "" -> None, "auto" -> the latest under ``ckpt_root`` (None if
    there is none yet), a path -> that checkpoint (an error if it is none)."""
    if not choice:
        return None
    if choice == "auto":  # the newest that verifies: a damaged one is skipped, with the reason
        damaged = []
        for _, ckpt in reversed(step_dirs(ckpt_root)):
            found = problems(ckpt)
            if not found:
                if found is None:
                    verify_checkpoint(ckpt)  # (the warning)
                return ckpt
            damaged.append(found[0])
            warnings.warn(f"checkpoint.resume=auto: {found[0]}: skipping {ckpt.name}", stacklevel=2)
        if damaged:  # never a fresh start over checkpoints that are all damaged
            raise CheckpointError(f"checkpoint.resume=auto: no checkpoint under {ckpt_root} "
                                  f"verifies ({damaged[0]})")
        return None
    if not (Path(choice) / CONFIG_FILE).is_file():
        raise CheckpointError(f"checkpoint.resume={choice}: not a checkpoint directory")
    verify_checkpoint(choice)
    return Path(choice)
