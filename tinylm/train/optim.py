"""How parameters are updated: the optimizers' groups and the learning-rate schedule.

``optim.name=muon`` (Keller Jordan's Muon, ``torch.optim.Muon``, as in the modded-nanogpt speed
records and nanochat): the 2-D matrices inside the blocks (attention and MLP projections) get
Muon, an orthogonalized-momentum update (5 Newton-Schulz steps, Nesterov momentum 0.95, peak LR
0.02 scaled by sqrt(max(1, rows/cols)) per matrix, no weight decay: modded-nanogpt's and
nanochat's settings); AdamW keeps the tied embedding/head matrix (exactly one state for it:
Muon is for hidden matrices, not embeddings or heads) and the norm scales.

The learning rate is a function of the optimizer-step count, set by hand on every step rather
than by a prepared scheduler: accelerate steps a prepared scheduler once per process per step,
which silently shortens warmup and decay on N processes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from tinylm.common.checks import NON_NEGATIVE, POSITIVE, require

# fused: one kernel over all tensors (CUDA, and CPU since torch 2.4); see docs/performance.md
ADAMW_IMPLS = {"fused": {"fused": True}, "foreach": {"foreach": True}, "loop": {"foreach": False}}


@dataclass
class OptimConfig:
    batch_size: int = 16  # sequences per process per micro-step
    grad_accum: int = 1  # micro-steps per optimizer step; tokens/step = batch*block*accum*procs
    max_steps: int = 1000  # optimizer steps (with max_time: a cap)
    max_time: float = 0.0  # seconds of wall time from launch, all included; 0 = steps decide
    lr: float = 1e-3  # peak LR; small models tolerate a large one (nanoGPT's CPU recipe uses 1e-3)
    min_lr_ratio: float = 0.1  # final LR = lr * this (Chinchilla: decay to ~10%)
    warmup_steps: int = 100  # linear warmup; Adam's second moment needs a few steps to settle
    schedule: str = "cosine"  # "cosine" or "wsd" (warmup-stable-decay, decay over the last 20%)
    weight_decay: float = 0.1  # on matrices (the tied one included), never on norm scales
    beta1: float = 0.9
    beta2: float = 0.95  # 0.95 rather than 0.999: steadier for small-batch LM training
    grad_clip: float = 1.0  # clip the global grad norm; 0 disables
    mixed_precision: str = "auto"  # "auto": bf16 on GPUs; on a CPU the faster, timed at start; "no", "bf16", "fp16"
    compile: bool = False  # torch.compile: faster steady state, slow first compile (docs/performance.md)
    adamw: str = "fused"  # "fused" (one kernel for all tensors, CPU and GPU), "foreach", "loop"
    name: str = "adamw"  # "adamw", or "muon": Muon for the blocks' matrices, AdamW for the rest
    muon_lr: float = 0.02  # Muon's peak LR (modded-nanogpt, nanochat); scaled by the schedule
    muon_momentum: float = 0.95  # Nesterov momentum, as in Keller Jordan's Muon
    muon_weight_decay: float = 0.0  # modded-nanogpt and nanochat decay Muon's matrices by 0
    qat_from: float = 0.0  # QAT: from this fraction of the run on, blocks see their matrices
    # quantized to qat_bits (0 = off; the golf records use ~0.85: the last steps learn to survive packing)
    qat_bits: int = 6  # what tinylm pack --bits will store
    skip_spikes: bool = False  # skip an update whose loss or grad norm spikes (train/spikes.py)
    spike_window: int = 128  # steps the mean and std are taken over (OLMo-core's default)
    spike_sigma: float = 6.0  # a spike: more than this many std above the window's mean
    spike_max_skips: int = 8  # more skips than this in a row: the run stops, naming a checkpoint

    def __post_init__(self) -> None:
        if self.mixed_precision == "False":  # YAML 1.1 reads a bare `no` as false: mean "no"
            self.mixed_precision = "no"
        choices = {"schedule": ("cosine", "wsd"), "mixed_precision": ("auto", "no", "bf16", "fp16"),
                   "adamw": ("fused", "foreach", "loop"), "name": ("adamw", "muon")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"optim.{key}={getattr(self, key)!r}: expected one of {', '.join(allowed)}")
        require("optim", self, {
            "batch_size": POSITIVE, "grad_accum": POSITIVE, "max_steps": POSITIVE,
            "max_time": (lambda v: v >= 0, ">= 0 seconds (0: max_steps alone decides)"),
            "lr": (lambda v: 0 < v < float("inf"), "a positive learning rate"),
            "min_lr_ratio": (lambda v: 0 <= v <= 1, "0..1"),
            "warmup_steps": (lambda v: v >= 0, ">= 0"),
            "weight_decay": (lambda v: v >= 0, ">= 0"),
            "beta1": (lambda v: 0 <= v < 1, "0 <= beta1 < 1"),
            "beta2": (lambda v: 0 <= v < 1, "0 <= beta2 < 1"),
            "grad_clip": NON_NEGATIVE,
            "muon_lr": (lambda v: 0 < v < float("inf"), "a positive learning rate"),
            "muon_momentum": (lambda v: 0 <= v < 1, "0 <= momentum < 1"),
            "muon_weight_decay": (lambda v: v >= 0, ">= 0"),
            "qat_from": (lambda v: 0 <= v < 1, "0 (off) or a fraction of the run in (0, 1)"),
            "qat_bits": (lambda v: v in (6, 8), "6 or 8 (what tinylm pack stores)"),
            "spike_window": POSITIVE, "spike_max_skips": NON_NEGATIVE,
            "spike_sigma": (lambda v: v > 0, "> 0 standard deviations")})


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig,
                    exclude: set[int] = frozenset()) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (over the parameters not in ``exclude``, ids).
    The tied embedding/head matrix is ONE parameter (``parameters()`` de-duplicates) and is
    decayed like the other matrices, as in GPT-2 and nanoGPT: it is the head's weight, and
    decaying only one of its two uses is not a thing a single parameter can do. Norm scales
    are never decayed."""
    params = [p for p in model.parameters() if id(p) not in exclude]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                             **ADAMW_IMPLS[cfg.adamw])


def build_optimizers(model: torch.nn.Module, cfg: OptimConfig) -> list[torch.optim.Optimizer]:
    """[AdamW] for ``optim.name=adamw``; [AdamW, Muon] for ``muon``. Every parameter is in
    exactly one group of one optimizer; each group remembers its peak LR (``set_lr``)."""
    if cfg.name == "adamw":
        optimizers = [build_optimizer(model, cfg)]
    else:
        hidden = {id(p) for n, p in model.named_parameters()
                  if n.startswith("layers.") and p.dim() == 2}
        adamw = build_optimizer(model, cfg, exclude=hidden)
        muon = torch.optim.Muon([p for p in model.parameters() if id(p) in hidden],
                                lr=cfg.muon_lr, momentum=cfg.muon_momentum, nesterov=True,
                                weight_decay=cfg.muon_weight_decay, adjust_lr_fn="original")
        optimizers = [adamw, muon]
    for opt in optimizers:
        for group in opt.param_groups:
            group["peak_lr"] = group["lr"]
    return optimizers


def lr_at(step: int, cfg: OptimConfig, progress: float | None = None) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warmup over
    ``warmup_steps``, then cosine to ``lr * min_lr_ratio``, or warmup-stable-decay with a
    linear decay over the last 20%.

    The decay follows ``progress`` in [0, 1], the fraction of the run done: the steps taken
    out of ``max_steps``, or with a time budget the fraction of ``max_time`` used (the
    trainer passes it), so a budget decays to the floor on any machine."""
    peak, floor = cfg.lr, cfg.lr * cfg.min_lr_ratio
    if step < cfg.warmup_steps:
        return peak * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "wsd":
        if progress is None:  # in steps: decay over the last 20% of max_steps
            decay_start = int(cfg.max_steps * 0.8)
            frac = (step - decay_start) / max(cfg.max_steps - decay_start, 1)
        else:
            frac = (progress - 0.8) / 0.2
        return peak if frac < 0 else peak + (floor - peak) * min(frac, 1.0)
    if progress is None:
        progress = (step - cfg.warmup_steps) / max(cfg.max_steps - cfg.warmup_steps, 1)
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


def set_lr(optimizers: list[torch.optim.Optimizer], lr: float, peak: float) -> None:
    """The schedule's ``lr`` (for peak ``peak``) on every group, each relative to its own
    peak: Muon's 0.02 and AdamW's ``optim.lr`` follow the same curve."""
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = lr * (group.get("peak_lr", peak) / peak)  # AdamW's: lr * 1.0, exact
