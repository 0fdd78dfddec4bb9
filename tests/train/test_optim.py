"""tinylm.train.optim: the learning-rate schedule, and one optimizer state for each tied matrix
and each block shared across depth (AdamW and Muon)."""

from __future__ import annotations

import pytest
import torch

from tinylm.model.config import GPTConfig
from tinylm.model.gpt import GPT
from tinylm.train.optim import OptimConfig, build_optimizer, lr_at


def test_lr_schedule_warms_up_and_decays_to_floor():
    c = OptimConfig(lr=1.0, warmup_steps=10, max_steps=100, min_lr_ratio=0.1)
    assert lr_at(0, c) == pytest.approx(0.1) and lr_at(9, c) == pytest.approx(1.0)
    assert lr_at(10, c) == pytest.approx(1.0) and lr_at(99, c) > 0.1
    assert lr_at(100, c) == pytest.approx(0.1)
    w = OptimConfig(lr=1.0, warmup_steps=10, max_steps=100, schedule="wsd", min_lr_ratio=0.0)
    assert lr_at(50, w) == 1.0 and lr_at(90, w) == pytest.approx(0.5) and lr_at(100, w) == 0.0


def test_adamw_implementations_agree_and_keep_one_state_for_the_tie():
    """fused (the default: one kernel on CPU too), foreach and loop take the same steps, and
    each sees the tied matrix once: one Adam state for both of its uses."""
    torch.manual_seed(0)
    idx = torch.randint(0, 64, (2, 16))
    results = {}
    for impl in ("fused", "foreach", "loop"):
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=16))
        opt = build_optimizer(model, OptimConfig(lr=1e-2, adamw=impl))
        before = model.lm_head.weight.detach().clone()
        for _ in range(3):
            model(idx, idx.roll(-1, 1))[1].backward()
            opt.step()
            opt.zero_grad()
        assert len(opt.state) == len(list(model.parameters()))
        assert opt.state[model.lm_head.weight] is opt.state[model.embed_tokens.weight]
        assert (model.lm_head.weight - before).abs().max() > 1e-3  # it did train
        results[impl] = model.lm_head.weight.detach()
    torch.testing.assert_close(results["fused"], results["foreach"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(results["loop"], results["foreach"], rtol=1e-5, atol=1e-6)


def test_muon_takes_the_hidden_matrices_and_adamw_the_tied_one_once():
    from tinylm.train.optim import build_optimizers

    model = GPT(GPTConfig(vocab_size=70, block_size=16, n_layer=2, n_head=2, n_embd=32))
    adamw, muon = build_optimizers(model, OptimConfig(name="muon"))
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    ids = [id(p) for opt in (adamw, muon) for g in opt.param_groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())  # each exactly once
    in_muon = {id(p) for g in muon.param_groups for p in g["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[i] for i in in_muon} == {n for n, p in model.named_parameters()
                                          if n.startswith("layers.") and p.dim() == 2}
    assert id(model.embed_tokens.weight) not in in_muon  # the tie is AdamW's, one state:
    model(torch.randint(0, 70, (2, 16)), torch.randint(0, 70, (2, 16)))[1].backward()
    adamw.step()
    muon.step()
    assert adamw.state[model.lm_head.weight] is adamw.state[model.embed_tokens.weight]
    assert len(adamw.state) == len(adamw.param_groups[0]["params"]) + len(adamw.param_groups[1]["params"])


def test_set_lr_moves_every_group_along_one_curve():
    from tinylm.train.optim import build_optimizers, set_lr

    model = GPT(GPTConfig(vocab_size=70, block_size=16, n_layer=1, n_head=2, n_embd=32))
    cfg = OptimConfig(name="muon", lr=1e-3, muon_lr=0.02)
    opts = build_optimizers(model, cfg)
    set_lr(opts, 2.5e-4, cfg.lr)  # a quarter of the peak
    assert {g["lr"] for g in opts[0].param_groups} == {2.5e-4}
    assert opts[1].param_groups[0]["lr"] == pytest.approx(0.005)


@pytest.mark.parametrize("name", ["adamw", "muon"])
def test_a_block_shared_across_depth_has_one_state_per_matrix(name):
    """4 depths over 2 unique blocks: every shared matrix is in exactly one optimizer once,
    with one state after a step, however many depths use it."""
    from tinylm.train.optim import build_optimizers

    model = GPT(GPTConfig(vocab_size=70, block_size=16, n_layer=4, n_head=2, n_embd=32,
                          layer_map="repeat:2"))
    optimizers = build_optimizers(model, OptimConfig(name=name))
    ids = [id(p) for opt in optimizers for g in opt.param_groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())  # each unique one once
    assert len(ids) == 1 + 2 * 6 + 1  # the tied matrix, 2 blocks x 6 tensors, the final norm
    model(torch.randint(0, 70, (2, 16)), torch.randint(0, 70, (2, 16)))[1].backward()
    for opt in optimizers:
        opt.step()
    states = [opt.state for opt in optimizers]
    w = model.layers[0].mlp.down_proj.weight
    assert w is model.layers[1].mlp.down_proj.weight
    assert sum(w in s for s in states) == 1 and sum(len(s) for s in states) == len(ids)
