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

import statistics
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from tinylm.model.gpt import GPT
from tinylm.train.distill import DistillConfig, distill_forward
from tinylm.train.optim import OptimConfig, build_optimizers, lr_at, set_lr


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm became NaN or infinite; nothing was applied."""


@dataclass
class StepStats:
    """What one step produced; tensors stay on the device (reading them syncs the host)."""

    loss: torch.Tensor  # mean over the micro-batches (the training objective, KD mix included)
    grad_norm: torch.Tensor  # global norm before clipping
    lr: float
    kl: torch.Tensor | None = None  # distillation's KL term, when distilling


def _cpu_has_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def measure_precision(model_cfg, optim_cfg: OptimConfig, steps: int = 3) -> dict[str, float]:
    """Median ms per training step of a scratch copy of the run's model, fp32 vs bf16
    autocast, in interleaved rounds on random tokens (the speed does not depend on them)."""
    g = torch.Generator().manual_seed(0)
    shape = (optim_cfg.batch_size, model_cfg.block_size)
    batch = (torch.randint(0, model_cfg.vocab_size, shape, generator=g),
             torch.randint(0, model_cfg.vocab_size, shape, generator=g))
    runs = {}
    for precision in ("no", "bf16"):
        model = GPT(model_cfg)
        runs[precision] = (model, build_optimizers(model, optim_cfg), LocalRuntime("cpu", precision))
    times: dict[str, list[float]] = {p: [] for p in runs}
    for i in range(steps + 1):  # the first round warms up and is not counted
        for precision, (model, opts, runtime) in runs.items():
            t0 = time.perf_counter()
            train_step(model, opts, iter([batch] * optim_cfg.grad_accum), runtime, optim_cfg, 0)
            if i:
                times[precision].append(1000 * (time.perf_counter() - t0))
    return {p: statistics.median(t) for p, t in times.items()}


def choose_precision(choice: str, model_cfg, optim_cfg: OptimConfig,
                     num_processes: int) -> tuple[str, str]:
    """(precision, why) for ``optim.mixed_precision``. "auto" on a CPU that can run bf16
    autocast times a few steps of each on this very model in one process and takes the faster
    (which one wins depends on the CPU and the width: docs/performance.md). Several CPU
    processes can't agree on a measurement before their process group exists: fp32."""
    if choice != "auto":
        return choice, ""
    if torch.cuda.is_available():
        return ("bf16" if torch.cuda.is_bf16_supported() else "no"), "auto: CUDA rule"
    if not _cpu_has_bf16():
        return "no", "auto: this CPU has no bf16 kernels"
    if num_processes > 1:
        return "no", "auto: fp32 for several CPU processes (no shared measurement)"
    ms = measure_precision(model_cfg, optim_cfg)
    best = min(ms, key=ms.get)
    return best, f"auto: measured {ms['bf16']:.1f} ms/step bf16 vs {ms['no']:.1f} fp32"


class StepWindow:
    """Sums of step stats since the last train line, kept on the device: read (one host sync,
    averaged over processes) only when a line is logged."""

    def __init__(self) -> None:
        self.n, self.sums, self.lr = 0, {}, 0.0

    def add(self, stats: StepStats) -> None:
        self.lr = stats.lr  # the line shows the current learning rate
        values = {"loss": stats.loss, "grad_norm": stats.grad_norm.float()}
        if stats.kl is not None:  # loss is then the mix; KL is the teacher-matching part
            values["distill_kl"] = stats.kl
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0) + v.detach()
        self.n += 1

    def pop(self, accelerator) -> dict:
        keys = list(self.sums)
        stacked = torch.stack([self.sums[k].to(accelerator.device).float() for k in keys])
        means = (accelerator.reduce(stacked, "mean") / self.n).tolist()
        self.n, self.sums = 0, {}
        return {**dict(zip(keys, means)), "lr": self.lr}


class LocalRuntime:
    """The members of an ``Accelerator`` that :func:`train_step` uses, for one process without
    accelerate. Benchmarks time several precisions in one process, which accelerate's
    process-wide state does not allow."""

    sync_gradients = True  # one process: nothing to all-reduce

    def __init__(self, device: str | torch.device, mixed_precision: str, grad_accum: int = 1) -> None:
        self.device, self.grad_accum = torch.device(device), grad_accum
        if mixed_precision not in ("no", "bf16", "fp16"):  # "auto": choose_precision first
            raise ValueError(f"mixed_precision={mixed_precision!r}: expected no, bf16 or fp16")
        self.mixed_precision = mixed_precision

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
               before_update: Callable[[StepStats], bool | None] | None = None,
               progress: float | None = None) -> StepStats:
    """Run optimizer step ``step`` (0-based; it sets the learning rate, with ``progress`` the
    fraction of a time budget used, see ``lr_at``) on ``model``. ``before_update`` sees the
    step's stats with the gradients all-reduced; when it returns True the update is skipped
    (the gradients are dropped: a spike, see train/spikes.py)."""
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
    if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor, the same on every rank
        grad_norm = grad_norm.full_tensor()
    stats = StepStats(loss_sum / cfg.grad_accum, grad_norm, lr_at(step, cfg, progress),
                      None if kl_sum is None else kl_sum / cfg.grad_accum)
    skip = before_update is not None and bool(before_update(stats))
    optimizers = optimizer if isinstance(optimizer, (list, tuple)) else [optimizer]
    set_lr(optimizers, stats.lr, cfg.lr)
    for opt in optimizers:
        if not skip:
            opt.step()
        opt.zero_grad(set_to_none=True)
    return stats
