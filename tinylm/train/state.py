"""What a training run carries besides its parts: the :class:`TrainState` a checkpoint resumes,
the :class:`TrainHooks` tests observe it through, and the :class:`StopSignal` that turns
SIGINT/SIGTERM into a checkpoint and a clean exit.
"""

from __future__ import annotations

import signal
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from tinylm.eval.loss import EvalResult


@dataclass
class TrainHooks:
    """Extension points, called on every process (tests use them to observe or inject faults)."""

    after_backward: Callable[[torch.nn.Module, int], None] | None = None  # (model, step)
    after_eval: Callable[[torch.nn.Module, EvalResult, int], None] | None = None
    after_step: Callable[[torch.nn.Module, int], None] | None = None


@dataclass
class TrainState:
    """Where a run is; saved with every checkpoint as trainer_state.json."""

    step: int = 0  # optimizer steps taken
    tokens: int = 0  # tokens trained on, all processes together
    train_seconds: float = 0.0  # wall time of the timed steps (a run's first step is not timed:
    steps_timed: int = 0  # it pays for compilation and warm-up)
    data: dict = field(default_factory=dict)  # TrainBatches position
    tracker_run_id: str | None = None  # the wandb run a resume continues
    budget_used_s: float = 0.0  # of optim.max_time, by the launches before this checkpoint
    spikes: dict = field(default_factory=dict)  # the spike guard's window (optim.skip_spikes)

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict, tokens_per_step: int) -> None:
        """Also reads checkpoints of tinylm 0.1 (step, data, wandb_run_id only)."""
        self.step, self.data = state["step"], state["data"]
        self.tokens = state.get("tokens", self.step * tokens_per_step)
        self.tracker_run_id = state.get("tracker_run_id", state.get("wandb_run_id"))
        self.budget_used_s = state.get("budget_used_s", 0.0)
        self.spikes = state.get("spikes", {})


class StopSignal:
    """SIGINT/SIGTERM ask for a checkpoint and a clean exit at the next step boundary; a second
    SIGINT interrupts at once. A context manager: the old handlers come back on exit."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict = {}

    def __enter__(self) -> "StopSignal":
        for s in (signal.SIGINT, signal.SIGTERM):
            self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
