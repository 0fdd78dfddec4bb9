"""The KV cache: decoding through it (prefill, one token at a time, a chunk after a prefix;
GPT.decode_step's lean path) gives the logits of a full recomputation, also with grouped-query
attention and with left padding."""

import pytest
import torch

from tinylm.model.config import GPTConfig
from tinylm.model.gpt import GPT
from tinylm.model.kv_cache import KVCache


def make(**kw) -> GPT:
    torch.manual_seed(0)
    cfg = dict(vocab_size=101, block_size=24, n_layer=2, n_head=4, n_embd=32)
    return GPT(GPTConfig(**{**cfg, **kw})).eval()


@pytest.mark.parametrize("n_kv_head", [None, 2, 1])
def test_kv_cache_decoding_equals_full_recomputation(n_kv_head):
    """Also with grouped-query attention: 4 query heads sharing 2 or 1 key/value heads, whose
    cache is 2 or 4 times smaller."""
    model = make(n_kv_head=n_kv_head)
    x = torch.randint(0, 101, (2, 20))
    full = model(x)
    cache = KVCache(model.config, batch_size=2)
    parts = [model(x[:, :7], cache=cache)]  # prefill
    parts += [model(x[:, t:t + 1], cache=cache) for t in range(7, 12)]  # one token at a time
    parts.append(model(x[:, 12:], cache=cache))  # a chunk after a prefix
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-4, atol=1e-5)
    assert cache.pos == 20 and cache.k.shape[2] == (n_kv_head or 4)
    with torch.inference_mode():  # the lean one-token path too
        cache = KVCache(model.config, batch_size=2)
        model(x[:, :7], cache=cache)
        steps = [model.decode_step(x[:, t:t + 1], cache) for t in range(7, 20)]
    torch.testing.assert_close(torch.stack(steps, dim=1), full[:, 7:], rtol=1e-4, atol=1e-5)


def test_kv_cache_left_padding_matches_unpadded():
    model = make()
    short, long_ = torch.randint(0, 101, (1, 5)), torch.randint(0, 101, (1, 9))
    batch = torch.cat([torch.cat([torch.zeros(1, 4, dtype=torch.long), short], 1), long_])
    cache = KVCache(model.config, batch_size=2)
    cache.pad_mask = torch.ones(2, cache.max_len, dtype=torch.bool)
    cache.pad_mask[0, :4] = False
    out = model(batch, cache=cache)
    step = model(torch.tensor([[3], [4]]), cache=cache)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0, 4:], model(short)[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(step[0, 0], model(torch.cat([short, torch.tensor([[3]])], 1))[0, -1],
                               rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(step[1, 0], model(torch.cat([long_, torch.tensor([[4]])], 1))[0, -1],
                               rtol=1e-4, atol=1e-5)


def test_a_block_shared_across_depth_gets_one_cache_slot_per_depth():
    """A looped model's cache holds every depth's keys and values (its depth, not its block,
    picks the slot): cached decoding, eager and lean, equals recomputation. One slot per
    block would hand the second use of a block the first use's keys."""
    model = make(n_layer=5, layer_map=[0, 1, 2, 1, 2])
    x = torch.randint(0, 101, (2, 20))
    full = model(x)
    cache = KVCache(model.config, batch_size=2)
    assert cache.k.shape[0] == 5  # depths, not the 3 unique blocks
    parts = [model(x[:, :7], cache=cache)] + [model(x[:, t:t + 1], cache=cache) for t in range(7, 20)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-4, atol=1e-5)
    with torch.inference_mode():
        cache = KVCache(model.config, batch_size=2)
        model(x[:, :7], cache=cache)
        steps = [model.decode_step(x[:, t:t + 1], cache) for t in range(7, 20)]
    torch.testing.assert_close(torch.stack(steps, dim=1), full[:, 7:], rtol=1e-4, atol=1e-5)
    assert not torch.equal(cache.k[1], cache.k[3])  # block 1's two depths saw different inputs
