"""Starting a run from a checkpoint's weights (``checkpoint.init_from``): weights only, checked to
fit; no optimizer state and no step (that is a resume's job)."""

from __future__ import annotations

from pathlib import Path

from tinylm.checkpoint.format import (MODEL_FILE, TOKENIZER_FILE, CheckpointError, model_config,
                                      read_weights, require_same_ties, resolve_checkpoint,
                                      verify_checkpoint)
from tinylm.data.tokenizer import require_same_tokenizer
from tinylm.model.config import GPTConfig
from tinylm.model.gpt import GPT
from tinylm.sharing.tying import check_ties
from tinylm.sharing.weights import set_weights


def init_from(model: GPT, path: str | Path, tokenizer_path: str | Path):
    """Overwrite every weight of ``model`` with checkpoint ``path``'s (a checkpoint dir, or a
    run dir's latest). Weights only: no optimizer state, no step (that is resume's job).

    The checkpoint must hold exactly ``model``'s tensors with the same shapes and ties, and its
    tokenizer.json must be the run's ``tokenizer_path`` (the same ids), else
    ``CheckpointError``/``TokenizerMismatchError``, one line each. Returns a ``CopyReport``.
    """
    ckpt = resolve_checkpoint(path)
    verify_checkpoint(ckpt)
    require_same_tokenizer(ckpt / TOKENIZER_FILE, tokenizer_path)
    tensors, file_groups = read_weights(ckpt / MODEL_FILE)
    require_same_ties(ckpt / MODEL_FILE, file_groups, model)
    try:
        report = set_weights(model, tensors, strict=True)
    except ValueError as e:
        raise CheckpointError(f"{ckpt / MODEL_FILE}: {e}") from None
    if report.missing:
        raise CheckpointError(f"{ckpt / MODEL_FILE}: no tensor for {report.missing[0]} "
                              f"({len(report.missing)} missing); is it this architecture?")
    check_ties(model)
    report.title = f"init_from {ckpt}"
    return report


def init_model_config(path: str | Path, vocab_size: int | None = None) -> GPTConfig:
    """The architecture a run that starts from checkpoint ``path``'s weights must build.
    ``vocab_size``, the run's tokenizer's, must match the checkpoint's, or ``CheckpointError``."""
    cfg = model_config(path)
    if vocab_size is not None and vocab_size != cfg.vocab_size:
        raise CheckpointError(f"{resolve_checkpoint(path)}: vocab_size {cfg.vocab_size}, but this "
                              f"run's tokenizer gives {vocab_size}")
    return cfg
