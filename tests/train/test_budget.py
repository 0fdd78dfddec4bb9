"""optim.max_time: the schedule follows the fraction of the budget used (a fake clock stands in
for machines of two speeds), a resume continues what was left, and ranks stop together."""

from __future__ import annotations

import json
import os
import signal

import pytest
from accelerate.state import AcceleratorState

from helpers import tiny_overrides
from tinylm.train.config import load_config
from tinylm.train.metrics import read_metrics
from tinylm.train.state import TrainHooks
from tinylm.checkpoint.format import step_dirs
from tinylm.train.trainer import Trainer

BUDGET = 20.0  # fake seconds


pytestmark = pytest.mark.usefixtures("in_process_training")  # conftest


@pytest.fixture(scope="module")
def corpus(prose_corpus):
    return prose_corpus


def budget_run(tmp_path, corpus, seconds_per_step: float, stop_at: int | None = None, **extra):
    """Train to a BUDGET-second budget on a fake clock that moves seconds_per_step per step."""
    now = [0.0]

    def after_step(model, step):
        now[0] += seconds_per_step
        if step == stop_at:
            os.kill(os.getpid(), signal.SIGTERM)

    cfg = load_config("tiny", tiny_overrides(tmp_path, corpus, **{
        "optim.max_time": BUDGET, "optim.max_steps": 1000, "optim.warmup_steps": 0,
        "log.interval": 1, "eval.interval": 0, "checkpoint.interval": 0, **extra}))
    summary = Trainer(cfg, TrainHooks(after_step=after_step), clock=lambda: now[0]).fit()
    AcceleratorState._reset_state(reset_partial_state=True)
    lrs = {r["step"]: r["lr"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")
           if r["kind"] == "train"}
    return summary, lrs


def test_the_schedule_follows_the_budget_not_the_machine(tmp_path, corpus):
    fast, fast_lr = budget_run(tmp_path / "fast", corpus, 1.0)
    slow, slow_lr = budget_run(tmp_path / "slow", corpus, 2.0)
    # the slow machine takes half the steps. The final eval and save are reserved, timed on
    # the budget's own (fake) clock: 0 s each, and 1 s for a save not yet timed
    assert (fast["step"], slow["step"]) == (19, 10)
    # the same learning rate at the same fraction of the budget: the k-th slow step starts at
    # 2(k-1) fake seconds, as the (2k-1)-th fast step does (a record's lr is its step's)
    shared = [k for k in slow_lr if 2 * k - 1 in fast_lr]
    assert len(shared) >= 5
    assert all(fast_lr[2 * k - 1] == pytest.approx(slow_lr[k], rel=1e-12) for k in shared)
    # and both decayed most of the way to the floor (lr 3e-3, floor 3e-4) by the end
    assert fast_lr[max(fast_lr)] < 6e-4 and slow_lr[max(slow_lr)] < 6e-4
    assert fast["budget_used_s"] <= BUDGET


def test_a_resumed_run_continues_what_its_budget_had_left(tmp_path, corpus):
    whole, _ = budget_run(tmp_path / "whole", corpus, 1.0)
    first, _ = budget_run(tmp_path / "parts", corpus, 1.0, stop_at=8)
    assert first["stopped_by"] == "SIGTERM" and first["step"] == 8
    state = json.loads((tmp_path / "parts" / "run" / "checkpoints" / "step-8" /
                        "trainer_state.json").read_text())
    assert state["budget_used_s"] == 8.0  # eight fake seconds of the twenty
    rest, _ = budget_run(tmp_path / "parts", corpus, 1.0, **{"checkpoint.resume": "auto"})
    assert rest["step"] == whole["step"]  # not 8 + a whole new budget


def test_checkpoints_by_wall_time_on_the_runs_clock(tmp_path, corpus):
    """checkpoint.interval_s=5 on the fake clock (1 s a step): a save every 5 s of the run,
    read (agreed by all processes) when a step starts: the clock reads 5 s as step 6 starts,
    so steps 6, 11, 16 save, and the final one."""
    summary, _ = budget_run(tmp_path, corpus, 1.0, **{"checkpoint.interval_s": 5, "checkpoint.keep_last": 0})
    saved = [s for s, _ in step_dirs(tmp_path / "run" / "checkpoints")]
    assert saved == [6, 11, 16, summary["step"]] and summary["step"] > 16
