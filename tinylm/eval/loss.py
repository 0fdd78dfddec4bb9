"""Evaluation: loss, perplexity and bits per byte over a split, on one or many processes.

Context policy: the split is cut into sequential, non-overlapping blocks of ``block_size``
tokens (``tinylm.data.batches.EvalBlocks``), each scored on its own; every token after the first is
predicted exactly once. Cheaper than a sliding window and what nanoGPT reports; a token early in
a block sees little context, so numbers are slightly pessimistic versus a strided window.

Bits per byte = total nats / (ln 2 x UTF-8 bytes of the text evaluated): unlike loss per
token, it compares models with different tokenizers. When only part of a split is evaluated
(a capped periodic eval) the byte count is the split's bytes scaled by the fraction of its
tokens covered.

Several processes give the same numbers as one: sums (not means) of per-sequence nats and token
counts are gathered with ``gather_for_metrics``, which drops the samples accelerate repeats to
even out the last batch, and added up in float64.

:func:`evaluate_checkpoint` scores a saved checkpoint with nothing else at hand: by default on
the validation split its config.json records; or on any source (a text file, folder, glob,
``python-docs``...; see ``tinylm.data.corpus``) tokenized with the checkpoint's own tokenizer.json
exactly as ``prepare`` tokenizes a split (normalized text, end-of-text after each document), so
a file scored here gives the same numbers as the same file prepared as ``data.val_source``.
Every failure is one line: ``CheckpointError`` for the checkpoint, ``DataError`` for the data,
``ValueError`` for a bad block or batch size.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from tinylm.checkpoint.format import TOKENIZER_FILE, CheckpointError
from tinylm.checkpoint.load import load_for_inference
from tinylm.common.checks import NON_NEGATIVE, POSITIVE, require
from tinylm.data.batches import EvalBlocks, Tokens
from tinylm.data.corpus import DataError
from tinylm.data.prepare import open_prepared, token_dtype
from tinylm.data.store import tokenize_source
from tinylm.data.units import SourceSpec
from tinylm.data.tokenizer import Tokenizer


@dataclass
class EvalConfig:
    interval: int = 200  # optimizer steps between evals (0 = only at the end)
    max_batches: int = 20  # cap for periodic evals (0 = whole val split); the final eval covers all
    batch_size: int = 16  # sequences per process per eval batch (and task requests per forward)
    # Downstream tasks in the loop (tinylm/eval/suite.py): off by default, so a run costs and
    # trains exactly as before. Names or name=FILE, as `tinylm evaluate --tasks`.
    tasks: List[str] = field(default_factory=list)
    task_interval: int = 0  # optimizer steps between task evals (0 = only at the end)
    task_limit: int = 200  # examples per task, fixed by task_seed: stderr ~0.03, seconds not minutes
    task_fewshot: int = 0  # shots per item (lm-eval's default for the six shipped tasks is 0)
    task_seed: int = 1234  # which examples and which shots (lm-eval's fewshot seed)
    extra_sources: List[str] = field(default_factory=list)  # more held-out sets: bpb/<name> each

    def __post_init__(self) -> None:
        require("eval", self, {"interval": NON_NEGATIVE, "max_batches": NON_NEGATIVE,
                               "batch_size": POSITIVE, "task_interval": NON_NEGATIVE,
                               "task_limit": POSITIVE, "task_fewshot": (lambda v: v >= 0, ">= 0")})


@dataclass
class EvalResult:
    loss: float  # mean nats per predicted token
    perplexity: float
    bits_per_byte: float
    tokens: int  # tokens predicted (targets scored)
    bytes: float  # UTF-8 bytes those tokens stand for

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    loader,
    *,
    split_bytes: int,
    split_tokens: int,
    accelerator=None,
    max_batches: int = 0,
) -> EvalResult:
    """Score ``model`` on ``loader``'s (x, y) blocks; y = -100 marks padding.

    The model is put in eval mode and restored to its previous mode afterwards, so the very
    module being trained can be evaluated between steps. ``split_tokens`` is the number of
    tokens of the split; ``split_tokens - 1`` of them are predictable.
    """
    was_training = model.training
    model.eval()
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    nats = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.int64, device=device)
    try:
        for i, (x, y) in enumerate(loader):
            if max_batches and i >= max_batches:
                break
            x, y = x.to(device), y.to(device)
            if accelerator is not None:
                with accelerator.autocast():
                    logits = model(x)
            else:
                logits = model(x)
            per_token = F.cross_entropy(
                logits.float().view(-1, logits.size(-1)), y.reshape(-1),
                ignore_index=-100, reduction="none",
            ).view(y.shape)
            seq_nats = per_token.double().sum(dim=1)
            seq_count = (y != -100).sum(dim=1)
            if accelerator is not None:
                seq_nats, seq_count = accelerator.gather_for_metrics((seq_nats, seq_count))
            nats += seq_nats.sum()
            count += seq_count.sum()
    finally:
        model.train(was_training)
    tokens = int(count.item())
    if tokens == 0:
        raise ValueError("evaluation scored no tokens: the split is empty or max_batches is 0")
    total = nats.item()
    covered_bytes = split_bytes * tokens / max(split_tokens - 1, 1)
    loss = total / tokens
    return EvalResult(
        loss=loss,
        perplexity=math.exp(min(loss, 700.0)),
        bits_per_byte=total / (math.log(2) * covered_bytes),
        tokens=tokens,
        bytes=covered_bytes,
    )


class Evaluator:
    """Periodic evaluation inside a training run: the very module being trained, on the
    validation split's own dataloader; decides its own cadence (``eval.interval``)."""

    def __init__(self, loader, cfg, meta: dict, accelerator) -> None:
        self.loader, self.cfg, self.accelerator = loader, cfg, accelerator
        self.split_bytes, self.split_tokens = meta["val_bytes"], meta["val_tokens"]

    def due(self, step: int, max_steps: int) -> bool:
        return bool(self.cfg.interval) and step % self.cfg.interval == 0 and step < max_steps

    def run(self, model: torch.nn.Module, final: bool = False,
            max_batches: int | None = None) -> EvalResult:
        """Periodic evals are capped at ``eval.max_batches``; the final one covers the split."""
        if max_batches is None:
            max_batches = 0 if final else self.cfg.max_batches
        return evaluate(model, self.loader, accelerator=self.accelerator, max_batches=max_batches,
                        split_bytes=self.split_bytes, split_tokens=self.split_tokens)

    @staticmethod
    def record(step: int, result: EvalResult) -> dict:
        return {"kind": "eval", "step": step, "val_loss": result.loss,
                "val_ppl": result.perplexity, "val_bits_per_byte": result.bits_per_byte,
                "val_tokens": result.tokens}


# -- checkpoints ---------------------------------------------------------------------------


@dataclass
class _Split:
    """Tokens to score (a token file, or a split of a store) and what they stand for."""

    tokens: Tokens
    dtype: np.dtype
    count: int
    bytes: int
    label: str


def _recorded_val_split(ckpt: Path, cfg: dict, tokenizer: Tokenizer) -> _Split:
    """The validation split the checkpoint was trained against, checked to be intact."""
    if "data_dir" not in cfg or "val_tokens" not in cfg or "val_bytes" not in cfg:
        raise CheckpointError(f"{ckpt}: config.json records no validation split; pass data")
    data_dir = Path(cfg["data_dir"])
    if not any((data_dir / m).is_file() for m in ("manifest.json", "meta.json")):
        raise DataError(f"{data_dir}: the checkpoint's prepared data is gone (no manifest.json); "
                        "re-prepare it or pass data")
    data = open_prepared(data_dir)  # every shard checked against its manifest
    val = data.split("val")
    if len(val) != cfg["val_tokens"]:
        raise DataError(f"{data_dir}: val split of {len(val)} tokens, but the checkpoint "
                        f"recorded {cfg['val_tokens']}: the data changed since training")
    tok_path = data_dir / TOKENIZER_FILE
    if tok_path.is_file() and Tokenizer.load(tok_path).content_hash() != tokenizer.content_hash():
        raise DataError(f"{tok_path}: not the checkpoint's tokenizer: the data was re-prepared")
    return _Split(val, data.dtype, cfg["val_tokens"], cfg["val_bytes"], f"val split of {data_dir}")


def _tokenize_source(source: str, tokenizer: Tokenizer, out: Path, data_dir: str) -> _Split:
    """Tokenize ``source`` into the token file ``out`` with ``prepare``'s own rule
    (normalized text, end-of-text after each non-empty document). Bytes are the UTF-8 bytes
    of that text. Streamed in batches: never whole in memory."""
    dtype = token_dtype(tokenizer.vocab_size)
    stats = tokenize_source(SourceSpec(source, data_dir=data_dir), tokenizer, out, dtype)
    if stats["tokens"] < 2:
        raise DataError(f"{source}: {stats['tokens']} token(s) of text; evaluation needs at least 2")
    return _Split(out, dtype, stats["tokens"], stats["bytes"], source)


def evaluate_checkpoint(
    ckpt: str | Path,
    data: str | None = None,
    *,
    block_size: int | None = None,
    batch_size: int = 16,
    accelerator=None,
    device: str | torch.device | None = None,
) -> dict:
    """Loss, perplexity and bits per byte of a checkpoint on ``data``, as a flat dict.

    ``data`` None is the validation split recorded in the checkpoint; otherwise a source,
    tokenized with the checkpoint's tokenizer (see the module docstring). ``block_size``
    defaults to the model's context (larger is an error: rotary positions past it were never
    trained); a text shorter than one block is scored as one shorter block. With
    ``accelerator`` the blocks are sharded over its processes and the sums gathered, and every
    process returns the same dict. ``device`` defaults to the accelerator's, else CUDA when
    there is one.
    """
    if device is None:
        device = accelerator.device if accelerator is not None else \
            ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer, cfg = load_for_inference(ckpt, device)
    context = model.config.block_size
    T = context if block_size is None else block_size
    if not 1 <= T <= context:
        raise ValueError(f"block_size={T}: expected 1..{context} (the model's context)")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: expected >= 1")
    first = accelerator.main_process_first() if accelerator is not None else contextlib.nullcontext()
    with tempfile.TemporaryDirectory(prefix="tinylm-eval-") as tmp:
        if data is None:
            split = _recorded_val_split(Path(ckpt), cfg, tokenizer)
        else:
            with first:  # one process fills the datasets cache, the others reuse it
                data_dir = cfg.get("train", {}).get("data", {}).get("dir", "data")  # python-docs' cache
                split = _tokenize_source(data, tokenizer, Path(tmp) / "eval.bin", data_dir)
        T = min(T, split.count - 1)
        loader = DataLoader(EvalBlocks(split.tokens, T, dtype=split.dtype), batch_size=batch_size)
        if accelerator is not None:
            loader = accelerator.prepare(loader)
        result = evaluate(model, loader, split_bytes=split.bytes, split_tokens=split.count,
                          accelerator=accelerator)
    packed = {k: cfg[k] for k in ("artifact_bytes", "artifact") if k in cfg}  # a packed file
    return {"checkpoint": str(ckpt), "step": cfg.get("step"), "data": split.label,
            "block_size": T, **result.to_dict(), **packed,
            "num_processes": accelerator.num_processes if accelerator is not None else 1}
