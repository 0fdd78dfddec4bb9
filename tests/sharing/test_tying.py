"""The tie toolkit: one Parameter, summed gradients, one optimizer state, and guards."""

import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call

from tinylm.model.config import GPTConfig
from tinylm.model.gpt import GPT
from tinylm.sharing.tying import TieError, check_ties, declared_ties, tie, tied_groups

TIED = ["embed_tokens.weight", "lm_head.weight"]


def small_gpt(**kw) -> GPT:
    torch.manual_seed(0)
    cfg = dict(vocab_size=97, block_size=16, n_layer=2, n_head=2, n_embd=32)
    return GPT(GPTConfig(**{**cfg, **kw}))


def batch(vocab=97, B=3, T=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab, (B, T + 1), generator=g)
    return x[:, :-1], x[:, 1:]


def untied_grads(model, x, y):
    """Gradients of an untied reference: the same values, but embedding and head are two
    independent leaves (functional_call with tie_weights=False)."""
    params = {n: p.detach().clone().requires_grad_(True)
              for n, p in model.named_parameters(remove_duplicate=False)}
    _, loss = functional_call(model, params, (x,), {"targets": y}, tie_weights=False)
    loss.backward()
    return {n: p.grad for n, p in params.items()}


def assert_tied(model, group=TIED):
    assert model.lm_head.weight is model.embed_tokens.weight
    assert tied_groups(model) == [group]
    check_ties(model)


def test_gpt_is_tied_by_default_and_untied_on_request():
    assert_tied(small_gpt())
    assert declared_ties(small_gpt())[0].src == "embed_tokens.weight"
    untied = small_gpt(tie_embeddings=False)
    assert tied_groups(untied) == [] and declared_ties(untied) == []
    assert untied.lm_head.weight is not untied.embed_tokens.weight


def test_tied_grad_is_sum_of_untied_reference_grads():
    model, (x, y) = small_gpt(), batch()
    ref = untied_grads(model, x, y)
    _, loss = model(x, y)
    loss.backward()
    torch.testing.assert_close(model.embed_tokens.weight.grad,
                               ref["embed_tokens.weight"] + ref["lm_head.weight"])
    # both uses really contribute: neither alone equals the tied grad
    assert not torch.allclose(model.embed_tokens.weight.grad, ref["lm_head.weight"])
    assert not torch.allclose(model.embed_tokens.weight.grad, ref["embed_tokens.weight"])


def test_optimizer_sees_tied_parameter_once():
    model = small_gpt()
    opt = torch.optim.AdamW(model.parameters())
    params = [p for g in opt.param_groups for p in g["params"]]
    assert len(params) == len({id(p) for p in params})
    assert sum(p.numel() for p in params) == model.num_params()
    untied = small_gpt(tie_embeddings=False)
    assert untied.num_params() - model.num_params() == 128 * 32  # vocab 97 pads to 128 rows


def adamw_step(params, grads):
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    for p, g in zip(params, grads):
        p.grad = g.clone()
    opt.step()


def test_one_adamw_step_equals_reference_with_summed_grad():
    """The NeMo failure mode: a fake tie matches under SGD but not under Adam."""
    model, (x, y) = small_gpt(), batch()
    ref = untied_grads(model, x, y)
    # Reference: one weight per unique Parameter; the tied one gets the summed gradient.
    names = [n for n, _ in model.named_parameters()]  # tied matrix once
    ref_params = [p.detach().clone().requires_grad_(True) for _, p in model.named_parameters()]
    ref_grads = [ref[n] + (ref["lm_head.weight"] if n == "embed_tokens.weight" else 0)
                 for n in names]
    adamw_step(ref_params, ref_grads)

    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    _, loss = model(x, y)
    loss.backward()
    opt.step()
    for n, p_ref in zip(names, ref_params):
        torch.testing.assert_close(dict(model.named_parameters())[n], p_ref, msg=n)
    assert_tied(model)
    assert len(opt.state) == len(names)  # one Adam state for the tied matrix

    # A fake tie (two Parameters on one storage) diverges from that reference under Adam.
    fake = small_gpt(tie_embeddings=False)
    fake.load_state_dict(small_gpt().state_dict())
    fake.lm_head.weight = nn.Parameter(fake.embed_tokens.weight.data)
    fopt = torch.optim.AdamW(fake.parameters(), lr=1e-2, weight_decay=0.1)
    _, floss = fake(x, y)
    floss.backward()
    fopt.step()
    assert not torch.allclose(fake.embed_tokens.weight, ref_params[names.index("embed_tokens.weight")])


@pytest.mark.parametrize("target", [torch.bfloat16, "cpu", torch.float64])
def test_tie_survives_to(target):
    model = small_gpt().to(target)
    assert_tied(model)


def test_tie_survives_to_in_overwrite_mode():
    """torch's overwrite-on-conversion mode gives each module a new Parameter; we re-join."""
    torch.__future__.set_overwrite_module_params_on_conversion(True)
    try:
        model = small_gpt()
        before = model.embed_tokens.weight
        model.to(torch.float64)
        assert model.embed_tokens.weight is not before  # the mode really replaced it
        assert_tied(model)
    finally:
        torch.__future__.set_overwrite_module_params_on_conversion(False)


def test_deepcopy_ties_to_itself_not_original():
    model = small_gpt()
    clone = copy.deepcopy(model)
    assert_tied(clone)
    assert clone.embed_tokens.weight is not model.embed_tokens.weight
    with torch.no_grad():
        clone.lm_head.weight.add_(1.0)
    assert torch.equal(clone.embed_tokens.weight, clone.lm_head.weight)
    assert not torch.equal(clone.embed_tokens.weight, model.embed_tokens.weight)
    # the copy's load hooks act on the copy
    clone.load_state_dict(clone.state_dict(), assign=True)
    assert_tied(clone)
    assert_tied(model)


@pytest.mark.parametrize("assign", [False, True])
def test_load_own_state_dict_keeps_tie(assign):
    src, model = small_gpt(), small_gpt()
    with torch.no_grad():
        src.embed_tokens.weight.mul_(2)
    sd = src.state_dict()
    model.load_state_dict(sd, assign=assign)
    assert_tied(model)
    torch.testing.assert_close(model.lm_head.weight, src.lm_head.weight)
    # assign=True leaves _metadata in the dict, so a later plain load assigns again
    model.load_state_dict(sd)
    assert_tied(model)
    x, y = batch()
    _, loss = model(x, y)
    loss.backward()
    assert model.lm_head.weight.grad is model.embed_tokens.weight.grad


def test_load_state_dict_with_one_tied_key_sets_the_group():
    model = small_gpt()
    sd = {k: v.clone() for k, v in small_gpt().state_dict().items() if k != "lm_head.weight"}
    sd["embed_tokens.weight"] += 1
    for assign in (False, True):
        model.load_state_dict(sd, strict=False, assign=assign)
        assert_tied(model)
        torch.testing.assert_close(model.lm_head.weight, sd["embed_tokens.weight"])


def test_state_dict_with_disagreeing_tied_values_raises():
    model = small_gpt()
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd["lm_head.weight"] += 1
    with pytest.raises(TieError, match="lm_head.weight"):
        model.load_state_dict(sd)


def test_compiled_model_grads_land_in_one_parameter():
    model, (x, y) = small_gpt(n_layer=1), batch()
    ref = untied_grads(model, x, y)
    compiled = torch.compile(model)
    _, loss = compiled(x, y)
    loss.backward()
    check_ties(compiled)
    assert [sorted(g) for g in tied_groups(compiled)] == [["_orig_mod." + n for n in TIED]]
    torch.testing.assert_close(model.lm_head.weight.grad,
                               ref["embed_tokens.weight"] + ref["lm_head.weight"],
                               rtol=1e-4, atol=1e-6)


def test_check_ties_catches_fake_tie():
    model = small_gpt()
    model.lm_head.weight = nn.Parameter(model.embed_tokens.weight.data)
    with pytest.raises(TieError, match="lm_head.weight"):
        check_ties(model)
    # an undeclared fake tie is caught too (storage aliasing)
    untied = small_gpt(tie_embeddings=False)
    untied.lm_head.weight = nn.Parameter(untied.embed_tokens.weight.data)
    with pytest.raises(TieError, match="fake tie"):
        check_ties(untied)


def test_check_ties_catches_broken_tie():
    model = small_gpt()
    model.lm_head.weight = nn.Parameter(model.embed_tokens.weight.detach().clone())
    with pytest.raises(TieError, match="tie broken"):
        check_ties(model)
    untied = small_gpt(tie_embeddings=False)
    with pytest.raises(TieError, match="should be one Parameter"):
        check_ties(untied, expected=[TIED])
    check_ties(small_gpt(), expected=[TIED])


def test_tie_any_two_modules_and_shape_errors():
    a, b = nn.Linear(4, 3), nn.Linear(4, 3)
    tie(a, "weight", b, "weight")
    assert b.weight is a.weight and b.bias is not a.bias
    with pytest.raises(TieError, match=r"shape \(3, 5\)"):
        tie(nn.Linear(4, 3), "weight", nn.Linear(5, 3), "weight")
    with pytest.raises(TieError, match="transpose"):
        tie(nn.Linear(4, 3), "weight", nn.Linear(4, 3), "weight", transform="transpose")
    with pytest.raises(TieError, match="no Parameter"):
        tie(nn.Linear(4, 3), "nope", nn.Linear(4, 3), "weight")
    with pytest.raises(TieError, match="transform"):
        tie(nn.Linear(4, 3), "weight", nn.Linear(4, 3), "weight", transform="flip")


@pytest.mark.parametrize("transform", ["same", "transpose"])
def test_to_empty_from_meta_keeps_a_tie(transform):
    """to_empty makes a new Parameter per module from one shared meta Parameter; the guard
    joins them back into one, for either transform."""
    from tinylm.sharing.tying import TieGuarded

    class Pair(TieGuarded):
        def __init__(self):
            super().__init__()
            self.enc, self.dec = nn.Linear(4, 6, bias=False), nn.Linear(6 if transform == "transpose" else 4,
                                                                        4 if transform == "transpose" else 6, bias=False)
            tie(self.enc, "weight", self.dec, "weight", transform=transform)

    with torch.device("meta"):
        pair = Pair()
    pair.to_empty(device="cpu")
    check_ties(pair)
    assert len(list(pair.parameters())) == 1 and not next(pair.parameters()).is_meta


def test_module_shares_are_declared_listed_and_checked_on_any_module():
    """share_modules is the toolkit's, not the GPT's: one Linear at two places of a Sequential
    (ALBERT-style reuse) is one module, its weight one Parameter under two names, and
    replacing one place with a copy is a TieError naming both."""
    import copy

    from tinylm.sharing.tying import share_modules, shared_modules

    inner = nn.Linear(4, 4)
    root = nn.Sequential(inner, nn.ReLU(), inner, nn.Sequential(inner))
    share_modules(root, [["0", "2", "3.0"]])
    assert shared_modules(root) == [["0", "2", "3.0"]]  # its weight and bias: not listed again
    assert tied_groups(root) == [["0.bias", "2.bias", "3.0.bias"], ["0.weight", "2.weight", "3.0.weight"]]
    check_ties(root)
    with pytest.raises(TieError, match=r"share_modules: \['0', '1'\] are not one module instance"):
        share_modules(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), [["0", "1"]])
    root[2] = copy.deepcopy(inner)
    with pytest.raises(TieError, match="share broken: 0, 2, 3.0 should be one module instance"):
        check_ties(root)
