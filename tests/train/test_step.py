"""tinylm.train.step: one training step, as the trainer and bench_step run it."""

from __future__ import annotations

import pytest
import torch

from tinylm.model.config import GPTConfig
from tinylm.model.gpt import GPT
from tinylm.train.optim import OptimConfig, build_optimizer, lr_at
from tinylm.train.step import LocalRuntime, train_step

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors, one thread


def batches(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x = torch.randint(0, 70, (4, 16), generator=g)
        yield x, x.roll(-1, 1)


def model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=70, block_size=16, n_layer=1, n_head=2, n_embd=16))


def test_grad_accum_2_of_batch_2_equals_one_batch_of_4():
    """Two micro-batches of 2 (loss scaled by 1/2 each, as accelerate does) make the same update
    as one batch of 4: the step is the mean over the micro-batches."""
    cfg1, cfg2 = OptimConfig(batch_size=4, lr=1e-2), OptimConfig(batch_size=2, grad_accum=2, lr=1e-2)
    a, b = model(), model()
    opt_a, opt_b = build_optimizer(a, cfg1), build_optimizer(b, cfg2)
    (x, y), = batches(1)
    sa = train_step(a, opt_a, iter([(x, y)]), LocalRuntime("cpu", "no"), cfg1, 0)
    sb = train_step(b, opt_b, iter([(x[:2], y[:2]), (x[2:], y[2:])]), LocalRuntime("cpu", "no", 2),
                    cfg2, 0)
    torch.testing.assert_close(sa.loss, sb.loss)
    torch.testing.assert_close(sa.grad_norm, sb.grad_norm)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-7)


def test_step_sets_the_lr_and_calls_before_update_before_applying():
    cfg = OptimConfig(lr=1.0, warmup_steps=10, max_steps=100, grad_clip=0.5)
    m = model()
    opt = build_optimizer(m, cfg)
    before = m.lm_head.weight.detach().clone()
    seen = {}

    def before_update(stats):
        seen["unchanged"] = torch.equal(m.lm_head.weight, before)
        seen["norm_after_clip"] = torch.nn.utils.get_total_norm(
            [p.grad for p in m.parameters()]).item()

    stats = train_step(m, opt, batches(1), LocalRuntime("cpu", "no"), cfg, 4,
                       before_update=before_update)
    assert seen["unchanged"] and not torch.equal(m.lm_head.weight, before)
    assert stats.lr == lr_at(4, cfg) == opt.param_groups[0]["lr"]
    assert stats.grad_norm.item() > 0.5 and seen["norm_after_clip"] == pytest.approx(0.5, rel=1e-4)
    assert all(p.grad is None for p in m.parameters())  # zeroed for the next step


def test_auto_precision_is_measured_on_this_model_and_the_faster_one_wins():
    from tinylm.train.step import _cpu_has_bf16, choose_precision, measure_precision

    cfg = GPTConfig(vocab_size=70, block_size=16, n_layer=1, n_head=2, n_embd=16)
    o = OptimConfig(batch_size=4)
    ms = measure_precision(cfg, o, steps=2)
    assert set(ms) == {"no", "bf16"} and all(v > 0 for v in ms.values())
    precision, why = choose_precision("auto", cfg, o, num_processes=1)
    if _cpu_has_bf16():
        assert precision in ("no", "bf16") and why.startswith("auto: measured")
    else:
        assert (precision, why) == ("no", "auto: this CPU has no bf16 kernels")
    assert choose_precision("auto", cfg, o, num_processes=2)[0] == "no"  # no shared measurement
    assert choose_precision("bf16", cfg, o, num_processes=1) == ("bf16", "")
