"""One training step, the unit the trainer loops over and ``benchmarks/bench_step.py`` times.

A step is ``grad_accum`` micro-batches (forward, backward; accelerate all-reduces the
gradients on the last), then, before anything is applied: the global gradient norm (clipped
when ``grad_clip`` > 0), the caller's ``before_update`` with the step's stats (the trainer
checks there that the loss and the norm are finite on every process, and that tied
parameters and gradients agree), the learning rate for this step, and AdamW.

``runtime`` is an ``accelerate.Accelerator`` or anything with the same few members
(:class:`LocalRuntime`): device, autocast(), accumulate(model), backward(loss),
clip_grad_norm_(params, max_norm), sync_gradients.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from tinylm.config import OptimConfig
from tinylm.distill import DistillConfig, distill_forward
from tinylm.optim import lr_at, set_lr


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm became NaN or infinite; nothing was applied."""


@dataclass
class StepStats:
    """What one step produced; tensors stay on the device (reading them syncs the host)."""

    loss: torch.Tensor  # mean over the micro-batches (the training objective, KD mix included)
    grad_norm: torch.Tensor  # global norm before clipping
    lr: float
    kl: torch.Tensor | None = None  # distillation's KL term, when distilling


def resolve_mixed_precision(choice: str) -> str:
    """"auto" -> bf16 on GPUs and CPUs that do bf16 natively, else "no" (fp32). Whether it is
    faster on a CPU depends on the width (measurements in docs/performance.md)."""
    if choice != "auto":
        return choice
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    try:
        return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "no"
    except (AttributeError, RuntimeError):
        return "no"


class LocalRuntime:
    """The members of an ``Accelerator`` that :func:`train_step` uses, for one process without
    accelerate. Benchmarks time several precisions in one process, which accelerate's
    process-wide state does not allow."""

    sync_gradients = True  # one process: nothing to all-reduce

    def __init__(self, device: str | torch.device, mixed_precision: str, grad_accum: int = 1) -> None:
        self.device, self.grad_accum = torch.device(device), grad_accum
        self.mixed_precision = resolve_mixed_precision(mixed_precision)

    def autocast(self):
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.mixed_precision)
        return torch.autocast(self.device.type, dtype=dtype) if dtype else nullcontext()

    def accumulate(self, model: torch.nn.Module):
        return nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.grad_accum if self.grad_accum > 1 else loss).backward()  # as accelerate does

    def clip_grad_norm_(self, params, max_norm: float) -> torch.Tensor:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)


def train_step(model: torch.nn.Module,
               optimizer: torch.optim.Optimizer | list[torch.optim.Optimizer],
               batches: Iterator[tuple[torch.Tensor, torch.Tensor]], runtime, cfg: OptimConfig,
               step: int, *, teacher: torch.nn.Module | None = None,
               distill: DistillConfig | None = None,
               before_update: Callable[[StepStats], None] | None = None,
               progress: float | None = None) -> StepStats:
    """Run optimizer step ``step`` (0-based; it sets the learning rate, with ``progress`` the
    fraction of a time budget used, see ``lr_at``) on ``model``."""
    loss_sum = torch.zeros((), device=runtime.device)
    kl_sum = torch.zeros((), device=runtime.device) if teacher is not None else None
    for _ in range(cfg.grad_accum):
        x, y = next(batches)
        x, y = x.to(runtime.device), y.to(runtime.device)
        with runtime.accumulate(model):
            with runtime.autocast():
                if teacher is None:
                    _, loss = model(x, y)
                else:
                    loss, parts = distill_forward(model, teacher, x, y, distill)
                    kl_sum += parts["kl"].detach().float()
            runtime.backward(loss)
        loss_sum += loss.detach().float()
    assert runtime.sync_gradients, "grad_accum micro-steps must end on a sync step"
    # Gradients are all-reduced now; nothing has been applied yet.
    grad_norm = runtime.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
    stats = StepStats(loss_sum / cfg.grad_accum, grad_norm, lr_at(step, cfg, progress),
                      None if kl_sum is None else kl_sum / cfg.grad_accum)
    if before_update is not None:
        before_update(stats)
    optimizers = optimizer if isinstance(optimizer, (list, tuple)) else [optimizer]
    set_lr(optimizers, stats.lr, cfg.lr)
    for opt in optimizers:
        opt.step()
        opt.zero_grad(set_to_none=True)
    return stats
