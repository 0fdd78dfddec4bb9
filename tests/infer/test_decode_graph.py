"""The fixed-shape one-token step (what a CUDA graph replays) gives decode_step's logits and
cache, on a padded batch, with grouped-query attention, across a re-prefill that replaces the
pad mask; on a CUDA device, generate's graphed decoding gives the eager decoder's text (that
test runs where a GPU is: benchmarks/gpu.py's machine)."""

from __future__ import annotations

import pytest
import torch

import gc
import runpy

from helpers import REPO
from tinylm.infer.decode_graph import _LAST, GraphedDecoder, graphed_decoder
from tinylm.model.config import GPTConfig
from tinylm.model.gpt import GPT
from tinylm.model.kv_cache import KVCache

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors, one thread


def _model(device: str = "cpu", **kw) -> GPT:
    torch.manual_seed(0)
    cfg = GPTConfig(**{"vocab_size": 100, "block_size": 16, "n_layer": 2, "n_head": 4,
                       "n_embd": 32, "init_std": 0.3, **kw})
    return GPT(cfg).to(device).eval()


def _padded_cache(model: GPT, device: str, pad_row1: int) -> KVCache:
    cache = KVCache(model.config, 2, device=device)
    cache.pad_mask = torch.ones(2, cache.max_len, dtype=torch.bool, device=device)
    cache.pad_mask[1, :pad_row1] = False
    return cache


@pytest.mark.parametrize("kw", [{}, {"n_kv_head": 2}], ids=["mha", "gqa"])
def test_fixed_shape_step_equals_decode_step(kw):
    model = _model(**kw)
    ids = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(1))
    eager, fixed = _padded_cache(model, "cpu", 3), _padded_cache(model, "cpu", 3)
    decoder = GraphedDecoder(model, fixed)
    assert not decoder.use_graph  # a CPU runs the same step eagerly
    with torch.inference_mode():
        for cache in (eager, fixed):
            model(ids[:, :5], cache=cache)
        for t in range(5, 16):
            a = model.decode_step(ids[:, t:t + 1], eager)
            b = decoder.step(ids[:, t:t + 1])
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
            assert fixed.pos == eager.pos == t + 1
        torch.testing.assert_close(fixed.k, eager.k, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fixed.v, eager.v, rtol=1e-5, atol=1e-5)
        with pytest.raises(ValueError, match="exceeds the context"):
            decoder.step(ids[:, :1])  # full: decode_step's forward raises the overflow


def test_a_new_pad_mask_after_a_re_prefill_is_read_at_the_next_step():
    model = _model()
    ids = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(2))
    fixed = _padded_cache(model, "cpu", 2)
    decoder = GraphedDecoder(model, fixed)
    with torch.inference_mode():
        model(ids[:, :4], cache=fixed)
        decoder.step(ids[:, 4:5])
        fixed.pos = 0  # a re-prefill, as generate's window re-start does: a new mask object
        fixed.pad_mask = _padded_cache(model, "cpu", 5).pad_mask
        model(ids[:, :7], cache=fixed)
        eager = _padded_cache(model, "cpu", 5)
        model(ids[:, :7], cache=eager)
        torch.testing.assert_close(decoder.step(ids[:, 7:8]),
                                   model.decode_step(ids[:, 7:8], eager), rtol=1e-5, atol=1e-5)


def test_a_hooked_model_is_refused():
    model = _model()
    model.layers[0].register_forward_hook(lambda *_: None)
    with pytest.raises(ValueError, match="plain GPT"):
        GraphedDecoder(model, KVCache(model.config, 1))


def test_the_last_decoder_is_reused_until_the_batch_or_the_weights_change():
    model = _model()
    first = graphed_decoder(model, 2)
    assert graphed_decoder(model, 2) is first  # the captured graph and its cache are kept
    other = graphed_decoder(model, 3)
    assert other is not first and other.cache.k.shape[1] == 3
    with torch.no_grad():  # an optimizer step: in place, same addresses, new values
        for w in model.parameters():
            w.mul_(1.5)
    assert graphed_decoder(model, 3) is other
    ids = torch.randint(0, 100, (3, 1))
    with torch.inference_mode():
        eager = KVCache(model.config, 3)
        other.cache.pos = eager.pos = 0
        torch.testing.assert_close(other.step(ids), model.decode_step(ids, eager))  # not stale
    model.double()  # the weights moved: a graph captured on the old ones would read garbage
    again = graphed_decoder(model, 3)
    assert again is not other and again.cache.k.dtype == torch.float64
    assert graphed_decoder(model, 3) is again
    model.layers[1].register_forward_pre_hook(lambda *_: None)
    assert graphed_decoder(model, 3) is None  # hooks: generate falls back to decode_step
    assert model not in _LAST
    held = _model()
    graphed_decoder(held, 1)
    del held
    gc.collect()
    assert len(_LAST) == 0  # a decoder does not keep its model alive


@pytest.mark.slow
def test_compiled_cpu_generation_equals_eager_and_compiles_once(tiny_run, capsys):
    """generate(compile=True) on a CPU: inductor's program for the fixed-shape step gives the
    eager decoder's greedy text across window re-starts, and a second call with the same batch
    reuses the compiled decoder (no second compile)."""
    from tinylm.checkpoint.load import load_for_inference
    from tinylm.infer.generate import generate

    model, tok, _ = load_for_inference(tiny_run / "checkpoints" / "step-10")
    n = 3 * model.config.block_size
    prompts = ["The quick fox", "Once upon a time"]
    compiled = generate(model, tok, prompts, n, temperature=0, compile=True)
    decoder = _LAST[model]
    assert decoder.compiled and decoder._run is not decoder._step
    assert compiled == generate(model, tok, prompts, n, temperature=0)
    assert generate(model, tok, prompts, n, temperature=0, compile=True) == compiled
    assert _LAST[model] is decoder
    main = runpy.run_path(str(REPO / "scripts" / "generate.py"), run_name="generate_script")["main"]
    argv = ["--max-new-tokens", str(n), "--temperature", "0", "--compile"]
    assert main([str(tiny_run / "checkpoints" / "step-10"), "--prompt", prompts[0], *argv]) == 0
    assert capsys.readouterr().out == prompts[0] + compiled[0] + "\n"  # tinylm generate --compile


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_graphed_generation_equals_eager_on_cuda(tiny_run):
    from tinylm.checkpoint.load import load_for_inference
    from tinylm.infer.generate import generate

    model, tok, _ = load_for_inference(tiny_run / "checkpoints" / "step-10", "cuda")
    prompts = ["The quick fox", "A", "", "Once upon a time"]
    for batch in (prompts[:1], prompts, prompts[:1]):  # several re-starts; a new batch size
        #  replaces the kept graph; the same batch twice reuses it (the last two calls below)
        graphed = generate(model, tok, batch, 3 * model.config.block_size, temperature=0)
        assert graphed == generate(model, tok, batch, 3 * model.config.block_size,
                                   temperature=0, cuda_graph=False)
