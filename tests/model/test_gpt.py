"""The GPT: shapes, causality, init loss, size and cost accounting, blocks shared across depth
(its KV cache: test_kv_cache.py; rotary: test_rotary.py; the map's forms: test_config.py)."""

import math

import pytest
import torch

from tinylm.model.config import GPTConfig
from tinylm.model.gpt import GPT


def make(**kw) -> GPT:
    torch.manual_seed(0)
    cfg = dict(vocab_size=101, block_size=24, n_layer=2, n_head=4, n_embd=32)
    return GPT(GPTConfig(**{**cfg, **kw})).eval()


def test_logits_shape_and_loss_path():
    model, x = make(), torch.randint(0, 101, (2, 10))
    assert model(x).shape == (2, 10, 101)
    logits, loss = model(x, x)
    assert logits.shape == (2, 10, 101) and loss.ndim == 0
    assert model(x, last_only=True).shape == (2, 1, 101)


def test_causality():
    model = make()
    x = torch.randint(0, 101, (1, 16))
    x2 = x.clone()
    x2[0, 10:] = (x2[0, 10:] + 1) % 101
    a, b = model(x), model(x2)
    torch.testing.assert_close(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_init_loss_is_about_ln_vocab():
    model = make(vocab_size=4096, n_embd=64)
    g = torch.Generator().manual_seed(0)
    seq = torch.randint(0, 4096, (8, 25), generator=g)
    _, loss = model(seq[:, :-1], seq[:, 1:])
    assert abs(loss.item() - math.log(4096)) < 0.1, loss.item()


def test_gqa_shrinks_the_kv_projection_and_n_kv_head_equal_to_n_head_is_the_default():
    full, gqa = make(), make(n_kv_head=1)
    assert full.layers[0].self_attn.qkv_proj.weight.shape == (3 * 32, 32)
    assert gqa.layers[0].self_attn.qkv_proj.weight.shape == (32 + 2 * 8, 32)  # head_dim 8
    assert full.num_params() - gqa.num_params() == 2 * 2 * (32 - 8) * 32  # 2 layers, k and v
    same = make(n_kv_head=4)
    x = torch.randint(0, 101, (2, 10))
    assert torch.equal(same(x), full(x))
    with pytest.raises(ValueError, match="n_kv_head=3 must divide n_head=4"):
        make(n_kv_head=3)


def test_context_overflow_is_an_error():
    model = make()
    with pytest.raises(ValueError, match="exceeds the context"):
        model(torch.zeros(1, 25, dtype=torch.long))


def test_embedding_accessors():
    model = make()
    assert model.get_input_embeddings() is model.embed_tokens
    assert model.get_output_embeddings() is model.lm_head
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


def test_param_count_worked_by_hand():
    # vocab 101 pads to 128 rows; width 32, hidden = 64 * ceil(8 * 32 / 3 / 64) = 128.
    # per block: qkv 32*96 + o 32*32 + gate_up 32*256 + down 128*32 + 2 norms * 32 = 16448
    # total: 2 blocks + the tied 128x32 matrix once + the final norm = 32896 + 4096 + 32
    assert make().num_params() == 37024
    assert make(tie_embeddings=False).num_params() == 37024 + 128 * 32  # a second matrix


@pytest.mark.parametrize("kw", [{}, dict(tie_embeddings=False), dict(n_layer=4, layer_map="cycle:2")])
def test_flops_per_token_equals_torchs_flop_counter(kw):
    """An independent count: torch's FlopCounterMode over a real forward + backward, with
    SDPA's math backend so attention runs as counted matmuls. A block shared across depth
    costs compute at every depth it runs."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    model, T = make(**kw).train(), 24
    x = torch.randint(0, 101, (3, T))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        _, loss = model(x, x)
        loss.backward()
    assert model.flops_per_token(T) == counter.get_total_flops() / (3 * T)


def test_vocab_padding_is_inside_the_model():
    """101 tokens: a 128-row tied matrix, logits of exactly 101 columns, padding rows zero
    and never given a gradient."""
    model = make().train()
    assert model.embed_tokens.weight.shape == (128, 32)
    assert model.embed_tokens.weight is model.lm_head.weight
    assert model.embed_tokens.weight[101:].abs().sum() == 0
    x = torch.randint(0, 101, (2, 10))
    logits, loss = model(x, x)
    assert logits.shape == (2, 10, 101)
    loss.backward()
    assert model.lm_head.weight.grad[101:].abs().sum() == 0
    assert model.lm_head.weight.grad[:101].abs().sum() > 0
    exact = make(vocab_size=128)
    assert exact.embed_tokens.weight.shape == (128, 32) and exact(x).shape == (2, 10, 128)


def test_residual_projections_are_scaled_by_depth():
    model = make(n_layer=8, n_embd=256, n_head=4)
    o = model.layers[0].self_attn.o_proj.weight.std().item()
    q = model.layers[0].self_attn.qkv_proj.weight.std().item()
    assert abs(q - 0.02) < 0.002 and abs(o - 0.02 / math.sqrt(16)) < 0.001


@pytest.mark.parametrize("bad", [dict(n_embd=30, n_head=4), dict(n_embd=12, n_head=4), dict(n_layer=0)])
def test_bad_config_is_a_clear_error(bad):
    with pytest.raises(ValueError):
        GPTConfig(**{**dict(vocab_size=10, block_size=8, n_layer=1, n_head=4, n_embd=32), **bad})


@pytest.mark.parametrize("kw", [{}, dict(n_layer=4, layer_map="cycle:2")])
def test_activation_checkpointing_gives_the_same_gradients_and_keeps_the_tie(kw):
    """Recomputing each block in backward changes memory, not math (fp32, same seed); a
    block shared across depth is recomputed at each of its depths."""
    plain, recompute = make(**kw).train(), make(**kw, activation_checkpointing=True).train()
    recompute.load_state_dict(plain.state_dict())
    x = torch.randint(0, 101, (3, 24))
    for m in (plain, recompute):
        _, loss = m(x, x.roll(-1, 1))
        loss.backward()
    for (name, a), b in zip(plain.named_parameters(), recompute.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-7, msg=name)
    assert recompute.lm_head.weight is recompute.embed_tokens.weight
    assert recompute.lm_head.weight.grad is recompute.embed_tokens.weight.grad


def test_meta_built_model_materializes_equal_to_an_eager_one_tie_intact():
    """Large configs are built on meta and materialised (to_empty + init): the tie survives
    to_empty (which gives each module its own copy: torchtitan #2252, accelerate #3668) and
    the weights equal an eagerly built model's from the same seed."""
    from tinylm.model.gpt import materialize
    from tinylm.sharing.tying import check_ties

    cfg = GPTConfig(vocab_size=100, block_size=16, n_layer=2, n_head=2, n_embd=32)
    torch.manual_seed(7)
    eager = GPT(cfg)
    with torch.device("meta"):
        lazy = GPT(cfg)
    assert lazy.lm_head.weight.is_meta and lazy.lm_head.weight is lazy.embed_tokens.weight
    materialize(lazy, "cpu", seed=7)
    check_ties(lazy)
    assert lazy.lm_head.weight is lazy.embed_tokens.weight and not lazy.lm_head.weight.is_meta
    assert lazy.state_dict().keys() == eager.state_dict().keys()
    for name, t in eager.state_dict().items():
        assert torch.equal(t, lazy.state_dict()[name]), name


# -- blocks shared across depth (model.layer_map) ---------------------------------------------

def unrolled_copy(looped: GPT) -> GPT:
    """A plain model with the same weights at every depth: each depth its own copy."""
    plain = make(n_layer=looped.config.n_layer)
    plain.load_state_dict({k: v.clone() for k, v in looped.state_dict().items()})
    return plain


def test_a_shared_block_is_one_instance_counted_once_and_reported():
    from tinylm.sharing.tying import check_ties, shared_modules, tied_groups

    model = make(n_layer=5, layer_map=[0, 1, 2, 1, 2])  # blocks 1-2 run twice
    assert model.layers[1] is model.layers[3] and model.layers[2] is model.layers[4]
    assert model.layers[0] is not model.layers[1]
    assert shared_modules(model) == [["layers.1", "layers.3"], ["layers.2", "layers.4"]]
    groups = tied_groups(model)
    assert ["layers.1.mlp.down_proj.weight", "layers.3.mlp.down_proj.weight"] in groups
    assert len(groups) == 1 + 2 * 6  # the embedding/head, and 6 tensors per shared block
    assert model.num_params() == make(n_layer=3).num_params()  # 3 unique blocks stored
    check_ties(model)


def test_a_shared_block_sums_the_gradients_of_its_depths():
    """One Parameter at two depths: its .grad is the sum of what an unrolled copy's two
    depths get, and the forward is the unrolled model's."""
    looped = make(n_layer=4, layer_map="cycle:2").train()
    plain = unrolled_copy(looped).train()
    x = torch.randint(0, 101, (3, 24))
    for m in (looped, plain):
        _, loss = m(x, x.roll(-1, 1))
        loss.backward()
    torch.testing.assert_close(looped(x), plain(x), rtol=1e-5, atol=1e-6)
    for name, p in looped.layers[0].named_parameters():
        summed = plain.layers[0].get_parameter(name).grad + plain.layers[2].get_parameter(name).grad
        torch.testing.assert_close(p.grad, summed, rtol=1e-5, atol=1e-7, msg=name)


def test_a_share_broken_by_a_copy_is_caught_and_loading_keeps_it():
    import copy

    from tinylm.sharing.tying import TieError, check_ties

    model = make(n_layer=4, layer_map="repeat:2")
    fresh = make(n_layer=4, layer_map="repeat:2")
    fresh.load_state_dict(model.state_dict(), assign=True)  # every depth's entry assigned
    assert fresh.layers[0] is fresh.layers[1]
    check_ties(fresh)
    broken = copy.deepcopy(model)  # deepcopy keeps the share (one memo per instance)...
    assert broken.layers[0] is broken.layers[1]
    broken.layers[1] = copy.deepcopy(broken.layers[0])  # ...replacing one depth breaks it
    with pytest.raises(TieError, match="share broken: layers.0, layers.1 should be one module"):
        check_ties(broken)
    state = model.state_dict()
    state["layers.1.mlp.down_proj.weight"] = state["layers.1.mlp.down_proj.weight"] + 1
    with pytest.raises(TieError, match="state dict disagrees with a tie"):
        fresh.load_state_dict(state)
