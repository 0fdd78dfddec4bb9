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

import torch

from tinylm.config import OptimConfig

# fused: one kernel over all tensors (CUDA, and CPU since torch 2.4); see docs/performance.md
ADAMW_IMPLS = {"fused": {"fused": True}, "foreach": {"foreach": True}, "loop": {"foreach": False}}


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
