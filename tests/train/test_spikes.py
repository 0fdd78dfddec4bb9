"""optim.skip_spikes: an update whose loss or gradient norm spikes is skipped (OLMo-core's rule),
logged and counted; too many in a row stop the run; the window resumes with the run."""

from __future__ import annotations

import json

import pytest
import torch
from accelerate.state import AcceleratorState

from helpers import tiny_overrides
from tinylm.distributed.parallel import unwrap
from tinylm.train.config import load_config
from tinylm.train.spikes import MIN_HISTORY, SpikeGuard
from tinylm.train.state import TrainHooks
from tinylm.train.step import TrainingDiverged
from tinylm.train.trainer import train


def test_the_rule_and_its_state():
    guard = SpikeGuard(window=50, sigma=6.0, max_skips=2)
    g = torch.Generator().manual_seed(0)
    for v in (3.0 + 0.01 * torch.randn(MIN_HISTORY + 10, generator=g)).tolist():
        assert guard.judge(v, 1.0 + v / 100) is None
    assert guard.judge(3.5, 1.03).startswith("loss 3.5 > 3.0")  # 50 std out
    assert guard.judge(3.0, 9.0).startswith("gradient norm 9 > 1.0")
    assert (guard.in_a_row, guard.skipped, len(guard.losses)) == (2, 2, MIN_HISTORY + 10)
    again = SpikeGuard(window=50, sigma=6.0, max_skips=2)
    again.load_state_dict(json.loads(json.dumps(guard.state_dict())))
    assert again.state_dict() == guard.state_dict()
    with pytest.raises(TrainingDiverged, match="3 updates in a row skipped as spikes at step 7.*"
                                               "Last good checkpoint: none"):
        again.check(9.0, 9.0, 7, print, None)
    assert guard.judge(3.0, 1.03) is None and guard.in_a_row == 0  # a normal step ends a streak


def spiked_run(tmp_path, corpus, spike_steps, **overrides):
    """A tiny run whose model is scaled 30x after step 24 (the next loss spikes) and, unless
    the spike lasts, scaled back after the step that follows; the tied matrix's value is
    recorded after every step."""
    seen = {}

    def after_step(model, step):
        w = unwrap(model).embed_tokens.weight
        with torch.no_grad():
            if step == 24:
                w.mul_(30)
            elif step == 24 + spike_steps:
                w.div_(30)
        seen[step] = w.detach().clone()

    cfg = load_config("configs/tiny.yaml", tiny_overrides(tmp_path, corpus, **{
        "optim.max_steps": 30, "optim.skip_spikes": True, "log.interval": 1, **overrides}))
    try:
        return train(cfg, TrainHooks(after_step=after_step)), seen
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


def test_a_spike_is_skipped_logged_and_counted(tmp_path, prose_corpus, capsys):
    summary, seen = spiked_run(tmp_path, prose_corpus, spike_steps=1)
    out = capsys.readouterr().out
    assert summary["step"] == 30
    assert "skipped the update of step 25: loss" in out and "(1 skipped in this run)" in out
    assert out.count("skipped the update") == 1
    torch.testing.assert_close(seen[25], seen[24] / 30, rtol=0, atol=0)  # no update at step 25
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    trains = {r["step"]: r for r in records if r["kind"] == "train"}
    assert trains[24]["skipped_updates"] == 0 and trains[30]["skipped_updates"] == 1
    state = json.loads((tmp_path / "run" / "checkpoints" / "step-30" / "trainer_state.json").read_text())
    assert state["spikes"]["skipped"] == 1 and len(state["spikes"]["losses"]) == 29


def test_too_many_skips_in_a_row_stop_the_run_naming_a_checkpoint(tmp_path, prose_corpus):
    with pytest.raises(TrainingDiverged, match=r"4 updates in a row skipped as spikes at step 27 .*"
                                               r"Last good checkpoint: .*step-20"):
        spiked_run(tmp_path, prose_corpus, spike_steps=100, **{"optim.spike_max_skips": 3})


def test_a_resume_judges_with_the_window_it_saved(tmp_path, prose_corpus):
    """Stopped at step 22 and resumed, the run skips step 25's spike as the uninterrupted run
    does, ending bitwise on its weights: only 2 steps of history after the resume would be too
    few to judge anything (MIN_HISTORY), so the window must come back from the checkpoint."""
    import os
    import signal

    from tinylm.checkpoint import format as ckpt

    uninterrupted, _ = spiked_run(tmp_path / "a", prose_corpus, spike_steps=1)

    def stop_at_22(model, step):
        if step == 22:
            os.kill(os.getpid(), signal.SIGTERM)

    cfg = load_config("configs/tiny.yaml", tiny_overrides(tmp_path / "b", prose_corpus, **{
        "optim.max_steps": 30, "optim.skip_spikes": True, "log.interval": 1}))
    try:
        assert train(cfg, TrainHooks(after_step=stop_at_22))["step"] == 22
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    resumed, _ = spiked_run(tmp_path / "b", prose_corpus, spike_steps=1, **{"checkpoint.resume": "auto"})
    assert resumed["step"] == 30
    a, _ = ckpt.read_weights(tmp_path / "a" / "run" / "checkpoints" / "step-30" / ckpt.MODEL_FILE)
    b, _ = ckpt.read_weights(tmp_path / "b" / "run" / "checkpoints" / "step-30" / ckpt.MODEL_FILE)
    assert all(torch.equal(a[n], b[n]) for n in a)
    state = lambda r: json.loads((r / "run" / "checkpoints" / "step-30" / "trainer_state.json").read_text())
    assert state(tmp_path / "a")["spikes"] == state(tmp_path / "b")["spikes"]
