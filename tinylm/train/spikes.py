"""Skipping an update on a loss or gradient-norm spike (``optim.skip_spikes``, OLMo-core's rule).

A long run on real data meets a bad batch now and then: the loss jumps many standard
deviations, the gradient norm with it, and the update that follows can set the run back by
thousands of steps. Non-finite values already stop a run (the trainer raises before the
update); a finite spike is judged here: against the mean and standard deviation of the last
``spike_window`` steps that were NOT skipped, a step whose loss or gradient norm is more than
``spike_sigma`` deviations above is skipped: its gradients are dropped, the optimizer does not
step, the step still counts (its data is consumed, the learning rate moves on). More than
``spike_max_skips`` skips in a row stop the run, naming the last good checkpoint: that is no
longer a spike but a run that diverged.

The window is part of the trainer state saved with every checkpoint, so a resume decides
exactly as the uninterrupted run would. The values judged are the same on every process (the
loss averaged over them, the gradient norm after the all-reduce), so every process skips alike.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Callable

from tinylm.train.step import TrainingDiverged

MIN_HISTORY = 20  # steps of history before anything is judged: early training falls fast


class SpikeGuard:
    """The rolling window and the verdict; :meth:`state_dict` goes into trainer_state.json."""

    def __init__(self, window: int, sigma: float, max_skips: int) -> None:
        self.sigma, self.max_skips = sigma, max_skips
        self.losses: deque[float] = deque(maxlen=window)
        self.norms: deque[float] = deque(maxlen=window)
        self.in_a_row = 0  # consecutive skips so far
        self.skipped = 0  # skips in the whole run

    @staticmethod
    def _limit(values: deque[float], sigma: float) -> float:
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1))
        return mean + sigma * std

    def judge(self, loss: float, grad_norm: float) -> str | None:
        """Why this step's update is skipped, or None (then it joins the window)."""
        if len(self.losses) >= MIN_HISTORY:
            loss_limit, norm_limit = self._limit(self.losses, self.sigma), self._limit(self.norms, self.sigma)
            if loss > loss_limit or grad_norm > norm_limit:
                self.in_a_row, self.skipped = self.in_a_row + 1, self.skipped + 1
                what = "loss" if loss > loss_limit else "gradient norm"
                value, limit = (loss, loss_limit) if loss > loss_limit else (grad_norm, norm_limit)
                return (f"{what} {value:.4g} > {limit:.4g} (mean + {self.sigma:g} std of the last "
                        f"{len(self.losses)} steps)")
        self.losses.append(loss)
        self.norms.append(grad_norm)
        self.in_a_row = 0
        return None

    def check(self, loss: float, grad_norm: float, step: int, say: Callable[[str], None],
              last_good) -> bool:
        """Whether to skip step ``step``'s update (saying so), or TrainingDiverged after more
        than ``max_skips`` in a row."""
        why = self.judge(loss, grad_norm)
        if why is None:
            return False
        if self.in_a_row > self.max_skips:
            raise TrainingDiverged(f"{self.in_a_row} updates in a row skipped as spikes at step "
                                   f"{step} ({why}); stopped. Last good checkpoint: {last_good or 'none'}")
        say(f"skipped the update of step {step + 1}: {why} ({self.skipped} skipped in this run)")
        return True

    def state_dict(self) -> dict:
        return {"losses": list(self.losses), "norms": list(self.norms), "in_a_row": self.in_a_row,
                "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.losses.extend(state.get("losses", []))
        self.norms.extend(state.get("norms", []))
        self.in_a_row, self.skipped = state.get("in_a_row", 0), state.get("skipped", 0)
