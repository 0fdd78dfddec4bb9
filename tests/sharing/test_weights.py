"""tinylm.sharing.weights: copies out, copies in, ties as groups, and no memory shared afterwards."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tinylm.model.config import GPTConfig
from tinylm.model.gpt import GPT
from tinylm.sharing.tying import check_ties
from tinylm.sharing.weights import CopyReport, get_weights, set_weights

CFG = GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=16)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors, one thread


def gpt(seed: int) -> GPT:
    torch.manual_seed(seed)
    return GPT(CFG)


def snapshot(m: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in m.named_parameters(remove_duplicate=False)}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def adamw_step(m: GPT, seed: int) -> None:
    """One real training step (loss, backward, AdamW with weight decay)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, CFG.vocab_size, (2, 8), generator=g)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.1)
    _, loss = m(x, x)
    loss.backward()
    opt.step()
    opt.zero_grad()


def test_get_weights_returns_detached_copies():
    m = gpt(0)
    before = snapshot(m)
    w = get_weights(m)
    assert set(w) == set(before)  # every name, tie alias included
    assert "lm_head.weight" in w and "embed_tokens.weight" in w
    for name, t in w.items():
        assert not isinstance(t, nn.Parameter) and not t.requires_grad, name
        assert torch.equal(t, before[name])
        t.add_(1.0)  # mutate every copy, the tied pair's too
    assert same(snapshot(m), before)
    w["embed_tokens.weight"].zero_()  # tie aliases are separate copies, not one
    assert not torch.equal(w["embed_tokens.weight"], w["lm_head.weight"])


def test_get_weights_by_name_and_unknown_name():
    m = gpt(0)
    w = get_weights(m, ["norm.weight", "lm_head.weight"])
    assert list(w) == ["norm.weight", "lm_head.weight"]
    assert torch.equal(w["lm_head.weight"], m.embed_tokens.weight)
    with pytest.raises(KeyError, match=r"'layers\.0\.mlp\.up_proj\.weight'.*did you mean"):
        get_weights(m, ["norm.weight", "layers.0.mlp.up_proj.weight"])


def test_set_weights_partial_and_report():
    src, dst = gpt(0), gpt(1)
    dst_params = {n: p for n, p in dst.named_parameters()}
    given = get_weights(src, ["layers.1.mlp.down_proj.weight", "norm.weight"])
    given["norm.weight"] = given["norm.weight"].double()  # the target's dtype must win
    given["not.a.weight"] = torch.zeros(3)
    report = set_weights(dst, given)

    assert isinstance(report, CopyReport)
    assert report.set_names == ["layers.1.mlp.down_proj.weight", "norm.weight"]
    assert report.unexpected == ["not.a.weight"]
    assert report.skipped == []
    all_names = set(snapshot(dst))
    assert set(report.missing) == all_names - {"layers.1.mlp.down_proj.weight", "norm.weight"}
    assert "lm_head.weight" in report.missing and "embed_tokens.weight" in report.missing
    # values copied in place: same Parameter objects, target dtype kept
    assert torch.equal(dst.layers[1].mlp.down_proj.weight, src.layers[1].mlp.down_proj.weight)
    assert torch.equal(dst.norm.weight, src.norm.weight.double().float())
    assert dst.norm.weight.dtype == torch.float32
    assert all(p is dst_params[n] for n, p in dst.named_parameters())
    assert not torch.equal(dst.layers[0].mlp.down_proj.weight, src.layers[0].mlp.down_proj.weight)
    text = str(report)
    assert text.splitlines()[0] == ("set_weights: 2 copied, 0 skipped, "
                                    f"{len(report.missing)} missing, 1 unexpected")
    assert any(line.startswith("copied") and "norm.weight" in line for line in text.splitlines())
    assert any(line.startswith("unexpected") and "not.a.weight" in line for line in text.splitlines())


def test_strict_unknown_name_raises_and_writes_nothing():
    src, dst = gpt(0), gpt(1)
    before = snapshot(dst)
    given = {"norm.weight": src.norm.weight.detach(), "layers.9.mlp.down_proj.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match=r"strict=True.*'layers\.9\.mlp\.down_proj\.weight'"):
        set_weights(dst, given, strict=True)
    assert same(snapshot(dst), before)
    assert set_weights(dst, given).unexpected == ["layers.9.mlp.down_proj.weight"]  # not strict


def test_shape_mismatch_names_tensor_and_both_shapes():
    dst = gpt(1)
    before = snapshot(dst)
    given = {"norm.weight": torch.ones(16), "layers.0.self_attn.o_proj.weight": torch.zeros(16, 8)}
    with pytest.raises(ValueError) as e:
        set_weights(dst, given)
    assert str(e.value) == ("set_weights: shape mismatch for layers.0.self_attn.o_proj.weight: "
                            "given (16, 8), module has (16, 16)")
    assert same(snapshot(dst), before)  # checked before anything is written, norm included


def test_setting_lm_head_sets_the_tied_group():
    dst = gpt(1)
    new = torch.randn(CFG.vocab_size, CFG.n_embd)
    report = set_weights(dst, {"lm_head.weight": new})
    assert torch.equal(dst.embed_tokens.weight, new)
    assert dst.lm_head.weight is dst.embed_tokens.weight
    check_ties(dst)
    assert "embed_tokens.weight" not in report.missing and "lm_head.weight" not in report.missing
    assert "tie group: embed_tokens.weight, lm_head.weight" in report.copied[0].note

    set_weights(dst, {"lm_head.weight": new, "embed_tokens.weight": new.clone()})  # agreeing: fine
    before = snapshot(dst)
    with pytest.raises(ValueError, match="embed_tokens.weight and lm_head.weight are one tied "
                                         "Parameter but were given different values"):
        set_weights(dst, {"embed_tokens.weight": new, "lm_head.weight": new + 1})
    assert same(snapshot(dst), before)


@pytest.mark.parametrize("live", [False, True], ids=["copies", "live-parameters"])
def test_independent_after_adamw_steps_both_ways(live):
    """After a copy, a real optimizer step on either side leaves the other untouched, even when
    the values handed over were the source's live Parameters."""
    a, b = gpt(0), gpt(1)
    set_weights(b, dict(a.named_parameters()) if live else get_weights(a), strict=True)
    assert same(snapshot(a), snapshot(b))
    check_ties(b)

    a_before = snapshot(a)
    adamw_step(b, seed=1)
    assert same(snapshot(a), a_before)
    assert not same(snapshot(b), a_before)

    b_before = snapshot(b)
    adamw_step(a, seed=2)
    assert same(snapshot(b), b_before)

    # and the other direction: b -> a, then step each again
    set_weights(a, dict(b.named_parameters()) if live else get_weights(b), strict=True)
    b_before = snapshot(b)
    adamw_step(a, seed=3)
    assert same(snapshot(b), b_before)
    a_before = snapshot(a)
    adamw_step(b, seed=4)
    assert same(snapshot(a), a_before)
    assert a.lm_head.weight is a.embed_tokens.weight and b.lm_head.weight is b.embed_tokens.weight
