"""Knowledge distillation: train a student on its teacher's next-token distributions.

The loss (Hinton et al. 2015) mixes the teacher's soft targets with the data's hard ones::

    loss = alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, targets)

where ``_T`` means softmax(logits / T). A temperature T > 1 flattens both distributions so the
teacher's ranking of the *wrong* tokens, which is most of what it knows beyond the data, carries
gradient; the T^2 keeps that term's gradient size independent of T. Positions whose target is
-100 (padding) count in neither term. The CE term is exactly ``GPT.forward``'s loss, so alpha=0
is ordinary training.

Vocabulary: teacher and student must share a tokenizer (:func:`load_teacher` checks), so their
logits have the same columns, exactly the tokenizer's ids (each model pads its matrix inside).

Public API::

    DistillConfig                      # the ``distill:`` config section
    distill_loss(student_logits, teacher_logits, targets, alpha, temperature) -> (loss, parts)
    distill_forward(model, teacher, x, y, cfg) -> (loss, parts)
    load_teacher(path, device, student_vocab_size, tokenizer_path) -> GPT
    require_same_tokenizer(a, b)       # raises TokenizerMismatchError
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from tinylm.checkpoint.format import TOKENIZER_FILE, load_model, resolve_checkpoint
from tinylm.data.tokenizer import Tokenizer, TokenizerMismatchError, require_same_tokenizer
from tinylm.model.gpt import GPT


@dataclass
class DistillConfig:
    teacher: str = ""  # checkpoint dir (or run dir: its latest); "" = no teacher, plain training
    alpha: float = 0.5  # weight of the teacher's soft targets vs the data: half each is the usual start
    temperature: float = 2.0  # > 1 exposes the teacher's ranking of unlikely tokens; 1-4 is typical

    def __post_init__(self) -> None:  # OmegaConf.to_object runs this: bad values fail at load
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"distill.alpha={self.alpha}: expected 0..1")
        if not self.temperature > 0:
            raise ValueError(f"distill.temperature={self.temperature}: must be positive")


def distill_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    alpha: float,
    temperature: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE`` (see the module docstring),
    averaged over positions whose target is not -100. Computed in float32 whatever the logits'
    dtype. No gradient reaches the teacher's logits.

    Returns ``(loss, parts)``; ``parts`` holds detached ``ce`` and ``kl`` (the KL at temperature T
    before the T^2 factor), for logging.
    """
    if student_logits.shape != teacher_logits.shape or student_logits.shape[:-1] != targets.shape:
        raise ValueError(f"distill_loss: student logits {tuple(student_logits.shape)}, teacher logits "
                         f"{tuple(teacher_logits.shape)} and targets {tuple(targets.shape)} disagree")
    if not 0.0 <= alpha <= 1.0 or not temperature > 0:
        raise ValueError(f"distill_loss: alpha={alpha} must be in 0..1 and temperature={temperature} > 0")
    V = student_logits.size(-1)
    ce = F.cross_entropy(student_logits.float().reshape(-1, V), targets.reshape(-1), ignore_index=-100)

    valid = (targets != -100).reshape(-1)
    s = student_logits.float().reshape(-1, V)[valid] / temperature
    t = teacher_logits.detach().float().reshape(-1, V)[valid] / temperature
    kl_rows = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True,
                       reduction="none").sum(-1)
    kl = kl_rows.sum() / valid.sum().clamp(min=1)

    loss = alpha * temperature**2 * kl + (1.0 - alpha) * ce
    return loss, {"ce": ce.detach(), "kl": kl.detach()}


def distill_forward(
    model: torch.nn.Module, teacher: GPT, x: torch.Tensor, y: torch.Tensor, cfg: DistillConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One training forward: the student's logits (with grad), the teacher's (without), and
    :func:`distill_loss` of the two. ``model`` may be wrapped (DDP, compile)."""
    student_logits = model(x)
    with torch.no_grad():
        teacher_logits = teacher(x)
    return distill_loss(student_logits, teacher_logits, y, cfg.alpha, cfg.temperature)


def load_teacher(
    path: str | Path,
    device: str | torch.device,
    student_vocab_size: int,
    tokenizer_path: str | Path,
) -> GPT:
    """The teacher of checkpoint ``path`` (or a run dir's latest), frozen: eval mode (no
    dropout) and ``requires_grad=False`` on every parameter, so it gets no gradient, no
    optimizer state and no DDP wrapper. Do not pass it to ``accelerator.prepare``.

    Its tokenizer.json must be the student's ``tokenizer_path``, and both models' vocab_size
    must be that tokenizer's size; else ``TokenizerMismatchError`` (a ``ValueError``).
    """
    ckpt = resolve_checkpoint(path)
    require_same_tokenizer(ckpt / TOKENIZER_FILE, tokenizer_path)
    teacher, _ = load_model(ckpt, device=device)
    n_tokens = Tokenizer.load(tokenizer_path).vocab_size
    if not n_tokens == teacher.config.vocab_size == student_vocab_size:
        raise TokenizerMismatchError(
            f"{tokenizer_path}: {n_tokens} tokens, but the teacher's vocab_size is "
            f"{teacher.config.vocab_size} and the student's {student_vocab_size}")
    teacher.requires_grad_(False)
    return teacher.eval()

