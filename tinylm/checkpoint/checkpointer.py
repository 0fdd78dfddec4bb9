"""The trainer's checkpointer: when to save, a collective save of any strategy's model into
one checkpoint, pruning, recovery from a killed save, and the two halves of a resume.

What a checkpoint *is* (its files, how ties are stored, how one is found and loaded) is
:mod:`tinylm.checkpoint.format`; this module is the run's side of it, the only code that writes
under ``<run_dir>/checkpoints``.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.utils import gather_object
from safetensors import SafetensorError

from tinylm.checkpoint.format import (MODEL_FILE, STATE_DIR, CheckpointError, latest_checkpoint,
                                      load_weights, read_trainer_state, step_dirs, write_checkpoint)
from tinylm.checkpoint.resume_state import OPTIMIZER_FILE, load_optimizer, optimizer_state, write_optimizer
from tinylm.checkpoint.rng import check_rng, load_rng, save_rng
from tinylm.common.atomic import publish_dir
from tinylm.common.checks import NON_NEGATIVE, require
from tinylm.distributed.parallel import full_state_dict, unwrap
from tinylm.model.gpt import GPT


@dataclass
class CheckpointConfig:
    interval: int = 500  # optimizer steps between checkpoints (0 = only at the end)
    keep_last: int = 2  # older step-N dirs are deleted once a newer one is complete
    keep_every: int = 0  # also keep every K-th step forever (Levanter keeps every 10k); 0 = off
    interval_s: float = 0.0  # also save when this much wall time passed since the last save
    # (Levanter: every 15 minutes; a step count alone leaves hours between saves on a slow run); 0 = off
    resume: str = ""  # "" = fresh start; "auto" = latest in run_dir; or a checkpoint dir
    init_from: str = ""  # start from these weights only (e.g. make_student.py output); its shape wins
    restore_rng: bool = True  # False: resume without the random state (only dropout uses it)
    trust_pickle: bool = False  # read tinylm 0.1's pickled RNG/optimizer files (torch >= 2.10 only)
    allow_data_change: bool = False  # resume although the data's fingerprint changed (logged)

    def __post_init__(self) -> None:
        require("checkpoint", self, {"interval": NON_NEGATIVE, "keep_last": (
            lambda v: v >= 0, ">= 0 (0 keeps every checkpoint)"), "keep_every": NON_NEGATIVE,
            "interval_s": (lambda v: v >= 0, ">= 0 seconds (0 turns it off)")})


class Checkpointer:
    """Saves and restores a training run under ``<run_dir>/checkpoints`` and decides when.

    ``save`` is collective (every process calls it): whole weights and optimizer state are
    gathered (from shards, under FSDP2), every process writes its RNG into the temp dir, the
    main process adds the model, optimizer, config, tokenizer and trainer state, then renames
    the whole into ``step-<N>`` and prunes to ``keep_last``. A restore is two halves: the
    weights before the model is wrapped, the optimizer and RNG after (``tinylm.checkpoint.resume_state``).
    """

    def __init__(self, run_dir: Path, accelerator, interval: int, keep_last: int,
                 trust_pickle: bool = False, keep_every: int = 0, interval_s: float = 0.0) -> None:
        self.root = Path(run_dir) / "checkpoints"
        self.accelerator, self.interval, self.keep_last = accelerator, interval, keep_last
        self.keep_every, self.interval_s = keep_every, interval_s
        self.saved_at_s = 0.0  # the run clock's reading at the last save (see due)
        self.trust_pickle = trust_pickle  # tinylm 0.1's pickled state files (checkpoint/rng.py)
        if accelerator.is_main_process:
            self.root.mkdir(parents=True, exist_ok=True)
            self._recover()

    def _recover(self) -> None:
        """Finish what a killed save left: a step-N renamed away (.step-N.old) whose new copy
        never arrived comes back; half-deleted and half-written leftovers go."""
        for old in self.root.glob(".step-*.old"):
            final = self.root / old.name[1:-len(".old")]
            if final.exists():
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(old, final)
        for junk in [*self.root.glob(".step-*.tmp"), *self.root.glob(".step-*.deleting")]:
            shutil.rmtree(junk, ignore_errors=True)

    def due(self, step: int, max_steps: int, now_s: float = 0.0) -> bool:
        """Whether to save after ``step``: every ``interval`` steps, or when ``interval_s``
        passed since the last save on the run's clock ``now_s`` (the same on every process:
        the trainer agrees on it). The final save is the trainer's."""
        if step >= max_steps:
            return False
        by_steps = bool(self.interval) and step % self.interval == 0
        return by_steps or bool(self.interval_s) and now_s - self.saved_at_s >= self.interval_s

    def latest(self) -> Path | None:
        return latest_checkpoint(self.root)

    def save(self, step: int, model: torch.nn.Module, optimizers: list, train_config: dict,
             tokenizer_path: Path, trainer_state: dict, extra: dict) -> Path:
        """Collective: ``model`` is the prepared one (DDP, FSDP2 or plain); whole tensors are
        gathered from its shards, so every strategy writes the same files. A failure on any
        process (a full disk: its RNG file, or the main process's files) removes the temp dir
        and raises the same CheckpointError on every process; earlier checkpoints are
        untouched, and nothing is published."""
        acc, final = self.accelerator, self.root / f"step-{step}"
        tmp = self.root / f".step-{step}.tmp"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            (tmp / STATE_DIR).mkdir(parents=True)
        weights = full_state_dict(model, keep=acc.is_main_process)  # collective under
        # FSDP2, like the next one
        optim = optimizer_state(model, optimizers)
        acc.wait_for_everyone()
        error = self._agree(self._attempt(final, lambda: save_rng(tmp / STATE_DIR, acc)))
        if error is None and acc.is_main_process:
            error = self._attempt(final, lambda: (
                write_optimizer(optim, tmp / STATE_DIR / OPTIMIZER_FILE),
                write_checkpoint(tmp, unwrap(model), train_config, tokenizer_path, trainer_state,
                                 {"step": step, **extra}, state=weights),
                publish_dir(tmp, final), self._prune()))
        error = self._agree(error)
        if error is not None:
            if acc.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)
            raise CheckpointError(error)
        return final

    @staticmethod
    def _attempt(final: Path, write) -> str | None:
        """Run ``write``; the one line a full disk (OSError, or safetensors' own error) gives."""
        try:
            write()
        except (OSError, SafetensorError) as e:
            reason = getattr(e, "strerror", None) or str(e).splitlines()[0]
            return f"{final}: not saved ({reason}); nothing was published, earlier checkpoints are intact"
        return None

    def _agree(self, error: str | None) -> str | None:
        """Collective: the first process's error, seen by every process."""
        if self.accelerator.num_processes == 1:
            return error
        return next((e for e in gather_object([error]) if e), None)

    def _prune(self) -> None:
        """Keep the newest ``keep_last``, and every ``keep_every``-th step forever; each other
        one is renamed away before it is deleted, so a kill mid-delete leaves no step-N that
        looks complete but is not."""
        if self.keep_last > 0:
            for step, old in step_dirs(self.root)[:-self.keep_last]:
                if self.keep_every and step % self.keep_every == 0:
                    continue
                doomed = old.with_name(f".{old.name}.deleting")
                os.replace(old, doomed)
                shutil.rmtree(doomed, ignore_errors=True)

    def restore_weights(self, ckpt: Path, model: GPT, rng: bool) -> None:
        """Weights into the unwrapped ``model`` (before DDP or FSDP2 wraps it: any strategy
        reads the same full tensors). With ``rng`` (the same process count, and
        ``checkpoint.restore_rng``), this process's RNG file must be there and readable
        (accelerate would skip it with an INFO line and resume with other random numbers);
        checked first, before anything is loaded."""
        if rng:
            check_rng(ckpt / STATE_DIR, self.accelerator.process_index, self.trust_pickle)
        load_weights(model, ckpt / MODEL_FILE, assign=model.embed_tokens.weight.is_meta)

    def restore_state(self, ckpt: Path, model: torch.nn.Module, optimizers: list,
                      rng: bool) -> dict:
        """Optimizer state (resharded into this run's layout) and RNG into the prepared run;
        returns the trainer state saved with them."""
        # CheckpointError if it does not fit
        load_optimizer(model, optimizers, ckpt / STATE_DIR, self.trust_pickle)
        if rng:
            load_rng(ckpt / STATE_DIR, self.accelerator, self.trust_pickle)
        return read_trainer_state(ckpt)
