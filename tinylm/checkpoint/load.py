"""What evaluate, generate and the other readers of a finished model load: a checkpoint
directory or a packed artifact (:mod:`tinylm.checkpoint.artifact`), the same way."""

from __future__ import annotations

from pathlib import Path

import torch

from tinylm.checkpoint.artifact import load_artifact
from tinylm.checkpoint.format import TOKENIZER_FILE, CheckpointError, is_artifact, load_model
from tinylm.data.corpus import DataError
from tinylm.data.tokenizer import Tokenizer
from tinylm.model.gpt import GPT


def load_for_inference(ckpt: str | Path, device: str | torch.device = "cpu"
                       ) -> tuple[GPT, Tokenizer, dict]:
    """(model in eval mode, its tokenizer, config.json) of a checkpoint directory or a packed
    artifact, checked to belong together: the model's vocab_size is the tokenizer's size. An
    artifact's config also carries ``artifact_bytes``, its exact size on disk."""
    ckpt = Path(ckpt)
    if is_artifact(ckpt):
        model, tokenizer, cfg = load_artifact(ckpt, device)
    elif not ckpt.is_dir():
        raise CheckpointError(f"{ckpt}: no such checkpoint directory (or packed artifact)")
    else:
        model, cfg = load_model(ckpt, device=device)
        tokenizer = _tokenizer(ckpt)
    if tokenizer.vocab_size != model.config.vocab_size:
        raise CheckpointError(
            f"{ckpt}: vocab mismatch: {TOKENIZER_FILE} has {tokenizer.vocab_size} tokens but the "
            f"model's vocab_size is {model.config.vocab_size}; the tokenizer is not this model's")
    return model, tokenizer, cfg


def _tokenizer(ckpt: Path) -> Tokenizer:
    try:
        return Tokenizer.load(ckpt / TOKENIZER_FILE)
    except DataError as e:
        raise CheckpointError(str(e)) from None
