"""``optim.max_time``: train for a wall-time budget instead of a step count.

A fixed step count is right on one machine only (the same preset ran 4x slower on another CPU
of the same machine kind). A budget is the same on all: "the best model in N seconds".

What is counted: wall time from the launch (the launcher's start for ranks it started, this
process's start otherwise; ``tinylm.train.rundir.launch_time``), so interpreter and accelerate start,
data preparation (tokenizer training, tokenizing), every step, periodic evals and checkpoints
are inside it; and training stops early enough for the final whole-split eval and the final
checkpoint to fit too, using an estimate of their cost (the eval's seconds per batch as
measured, times its batches; the last save's seconds, or 1 s before the first). A resumed run
continues with what its checkpoint had left.

The learning rate decays with the fraction of the budget used (``tinylm.train.optim.lr_at``), so a
budget reaches the floor LR on a fast or a slow machine alike. All processes decide on the
same numbers: the trainer takes the maximum of every rank's clock in its one per-step
all-reduce, so no rank takes one step more than another. What stops being exact: the step
count depends on machine speed, so bit-for-bit resume is promised for step budgets only.
"""

from __future__ import annotations

import time
from typing import Callable

from tinylm.train.rundir import launch_time


class TimeBudget:
    """The budget's clock: seconds used so far, and the reserve the end of the run needs."""

    def __init__(self, seconds: float, used_before: float = 0.0,
                 clock: Callable[[], float] | None = None, launched_at: float | None = None) -> None:
        self.seconds, self.used_before = seconds, used_before  # 0 seconds: no budget
        self.clock = clock or time.time
        self.launched_at = launched_at if launched_at is not None else (
            self.clock() if clock else launch_time())
        self.eval_s_per_batch: float | None = None  # measured by the trainer's evals
        self.save_s = 1.0  # until a save is timed

    def used(self) -> float:
        """Seconds of the budget used, this launch and the ones before a resume."""
        return self.used_before + self.clock() - self.launched_at

    def reserve(self, eval_batches: int) -> float:
        """Seconds the final eval and the final checkpoint are expected to take."""
        return (self.eval_s_per_batch or 0.0) * eval_batches + self.save_s
