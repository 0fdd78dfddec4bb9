"""Typed training configuration: YAML files + dotted overrides, validated by OmegaConf.

Every section is a dataclass, so a mistyped key or a wrongly typed value is an error that names
it (with the closest valid key), never a silently ignored setting. The resolved config is saved
with each run and each checkpoint.

    cfg = load_config("configs/tiny.yaml", ["model.n_layer=6", "run_dir=runs/x"])
    cfg = load_config("tiny")   # a preset, by name, from any directory

Presets are the YAML files in the checkout's ``configs/``, installed as the package data
``tinylm.configs`` (pyproject.toml), so they are found without a checkout too.
"""

from __future__ import annotations

import difflib
import importlib.resources
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from tinylm.checkpoint.checkpointer import CheckpointConfig
from tinylm.common.atomic import atomic_write
from tinylm.common.checks import require
from tinylm.data.prepare import DataConfig
from tinylm.distributed.parallel import ParallelConfig
from tinylm.distributed.sync_check import SyncCheckConfig
from tinylm.eval.loss import EvalConfig
from tinylm.model.config import GPTConfig
from tinylm.train.distill import DistillConfig
from tinylm.train.metrics import LogConfig
from tinylm.train.optim import OptimConfig

DEFAULT_PRESET = "default"


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the key or file."""


@dataclass
class TrainConfig:
    run_dir: str = "runs/default"  # where metrics, checkpoints, plots and wandb files go
    seed: int = 1337
    cpu_threads: int = 0  # torch threads per process on CPU; 0 = cores / local processes
    # (accelerate launch sets OMP_NUM_THREADS=1 for one CPU process: half of a 2-core machine)
    model: GPTConfig = field(default_factory=GPTConfig)  # vocab_size is set from the tokenizer
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    sync_check: SyncCheckConfig = field(default_factory=SyncCheckConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)  # ddp or fsdp2 (tinylm/distributed/parallel.py)
    distill: DistillConfig = field(default_factory=DistillConfig)  # off unless distill.teacher is set

    def __post_init__(self) -> None:
        require("", self, {"run_dir": (bool, "a directory"), "cpu_threads": (
            lambda v: v >= 0, ">= 0 (0 = cores / local processes)")})


def _closest(key: str, node: Any) -> str:
    if not isinstance(node, DictConfig):
        return ""
    match = difflib.get_close_matches(key, [str(k) for k in node.keys()], n=1)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _explain(err: OmegaConfBaseException, schema: DictConfig, where: str) -> ConfigError:
    full_key = getattr(err, "full_key", None) or getattr(err, "key", None) or "?"
    parts = str(full_key).split(".")
    node: Any = schema
    for p in parts[:-1]:
        node = node.get(p) if isinstance(node, DictConfig) else None
    if isinstance(err, ConfigKeyError):
        hint = _closest(parts[-1], node)
        return ConfigError(f"{where}: unknown key '{full_key}'{hint}")
    msg = str(err).splitlines()[0]
    return ConfigError(f"{where}: bad value for '{full_key}': {msg}")


def presets_dir() -> Path:
    """Where the presets are: the installed tinylm.configs (an install maps the checkout's
    configs/ there), or the checkout's configs/ when tinylm runs uninstalled from PYTHONPATH."""
    try:
        return Path(str(importlib.resources.files("tinylm.configs")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "configs"


def preset_names() -> list[str]:
    return sorted(p.stem for p in presets_dir().glob("*.yaml"))


def resolve_config_path(name: str | Path | None) -> Path:
    """A YAML file's path, or a preset's name ("tiny", "tiny.yaml"); None is the default."""
    path = Path(name) if name else presets_dir() / f"{DEFAULT_PRESET}.yaml"
    if path.is_file():
        return path
    preset = presets_dir() / f"{path.name.removesuffix('.yaml')}.yaml"
    if name and Path(name).name == str(name) and preset.is_file():
        return preset
    raise ConfigError(f"{path}: config file not found, and no preset of that name "
                      f"(presets: {', '.join(preset_names())})")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Defaults < YAML file (or preset) < ``key.sub=value`` overrides; a validated TrainConfig."""
    schema = OmegaConf.structured(TrainConfig)
    cfg = schema
    path = resolve_config_path(path)
    try:
        file_cfg = OmegaConf.load(path)
    except Exception as e:  # yaml's errors carry a mark: the line and column of the problem
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    if not isinstance(file_cfg, DictConfig):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    try:
        cfg = file_cfg_merged = OmegaConf.merge(cfg, file_cfg)
    except OmegaConfBaseException as e:
        raise _explain(e, schema, str(path)) from None
    for ov in overrides or []:
        if "=" not in ov:
            raise ConfigError(f"override '{ov}': expected key=value, e.g. model.n_layer=6")
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([_flow(ov)]))
        except OmegaConfBaseException as e:
            raise _explain(e, schema, f"override '{ov}'") from None
    try:
        return _validated(cfg)
    except ConfigError as e:  # name the override that made it invalid, if one did
        blame = str(path)
        for i, ov in enumerate(overrides if _is_valid(file_cfg_merged) else []):
            try:
                _validated(OmegaConf.merge(file_cfg_merged, OmegaConf.from_dotlist(
                    [_flow(o) for o in overrides[:i + 1]])))
            except ConfigError:
                blame = f"override '{ov}'"
                break
        raise ConfigError(f"{blame}: {e}") from None


def _flow(override: str) -> str:
    """``data.mixture=[{source:a.txt,weight:0.7}]`` as YAML reads it: a space after each key
    of a flow mapping (YAML takes ``source:a.txt`` for one key; ``hf://`` is left alone)."""
    key, _, value = override.partition("=")
    if not value.lstrip().startswith(("[", "{")):
        return override
    return f"{key}=" + re.sub(r"([{,]\s*)([A-Za-z_]\w*):(?!\s|//)", r"\1\2: ", value)


def _validated(cfg: DictConfig) -> TrainConfig:
    """Each section's own validation (dataclass __post_init__), its key named in full."""
    try:
        return OmegaConf.to_object(cfg)
    except (ValueError, OmegaConfBaseException) as e:
        msg = str(e).splitlines()[0]
        section = next((k for k in ("model", "data", "optim", "eval", "checkpoint", "log",
                                    "sync_check", "distill", "parallel") if _fails(cfg, k)), None)
        if section and not msg.startswith(f"{section}."):
            msg = f"{section}.{msg}"  # GPTConfig's messages are the model section's
        raise ConfigError(msg.lstrip(".")) from None


def _is_valid(cfg: DictConfig) -> bool:
    try:
        _validated(cfg)
        return True
    except ConfigError:
        return False


def _fails(cfg: DictConfig, section: str) -> bool:
    try:
        OmegaConf.to_object(cfg[section])
        return False
    except (ValueError, OmegaConfBaseException):
        return True


def config_to_dict(cfg: TrainConfig) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically."""
    atomic_write(path, OmegaConf.to_yaml(OmegaConf.structured(cfg)))
