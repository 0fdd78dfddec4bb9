"""Generation: the KV cache changes nothing but speed, batching changes nothing, sampling is
reproducible, the filters and stops do what they say, streaming adds up to the result.

Most tests use a random model with peaked logits (init std 0.3): its greedy choices are far
from ties, so two computations of the same logits that differ in rounding still pick the same
token, and its output is varied rather than one repeated token. Its context is 16 tokens
(windows re-start every 4 new tokens and keep 13), so 64 new tokens cross many re-starts.
"""

from __future__ import annotations

import io
import runpy
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from helpers import REPO, quiet_env
from tinylm.checkpoint.load import load_for_inference
from tinylm.data.tokenizer import EOT, Tokenizer
from tinylm.infer.generate import _Row, _take, generate, sample_next
from tinylm.model.config import GPTConfig
from tinylm.model.gpt import GPT
from tinylm.model.kv_cache import KVCache

SCRIPT = REPO / "scripts" / "generate.py"
PROMPTS = ["The quick fox", "A", "", "Once upon a time"]  # 11, 1, 0 and 12 tokens


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors, one thread


@pytest.fixture(scope="module")
def ckpt(tiny_run: Path) -> Path:
    """The last checkpoint of the session's tiny run (conftest, 10 steps)."""
    return tiny_run / "checkpoints" / "step-10"


@pytest.fixture(scope="module")
def tok(ckpt: Path) -> Tokenizer:
    return Tokenizer.load(ckpt / "tokenizer.json")


@pytest.fixture(scope="module")
def model(tok: Tokenizer) -> GPT:
    torch.manual_seed(1)  # (seed 0's greedy text happens to loop on 6 characters)
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=32,
                    init_std=0.3)
    return GPT(cfg).eval()


def test_cached_equals_uncached_greedy_single_prompt(model, tok, ckpt):
    cached = generate(model, tok, [PROMPTS[0]], 64, temperature=0)
    assert cached == generate(model, tok, [PROMPTS[0]], 64, temperature=0, use_cache=False)
    assert len(set(cached[0])) > 10  # varied text, 64 tokens: past several window re-starts
    trained = load_for_inference(ckpt)[0]
    assert generate(trained, tok, [PROMPTS[0]], 64, temperature=0) == \
        generate(trained, tok, [PROMPTS[0]], 64, temperature=0, use_cache=False)


def test_cached_equals_uncached_greedy_batch_of_different_lengths(model, tok):
    cached = generate(model, tok, PROMPTS, 64, temperature=0)
    assert cached == generate(model, tok, PROMPTS, 64, temperature=0, use_cache=False)
    # and each row is what its prompt gives alone: padding and batching change nothing
    assert cached == [generate(model, tok, [p], 64, temperature=0)[0] for p in PROMPTS]
    assert len(set(cached)) == len(PROMPTS)


def test_cached_equals_uncached_with_blocks_shared_across_depth(tok):
    """A looped model (3 unique blocks over 5 depths) decodes through a cache slot per depth:
    cached greedy text equals the uncached recomputation, window re-starts included."""
    torch.manual_seed(1)
    looped = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=5, n_head=2,
                           n_embd=32, init_std=0.3, layer_map=[0, 1, 2, 1, 2])).eval()
    cached = generate(looped, tok, PROMPTS, 48, temperature=0)
    assert cached == generate(looped, tok, PROMPTS, 48, temperature=0, use_cache=False)
    assert len(set(cached[0])) > 5


def test_cached_equals_uncached_when_sampling(model, tok):
    kw = dict(temperature=1.0, seed=7, top_k=50)
    assert generate(model, tok, PROMPTS, 64, **kw) == generate(model, tok, PROMPTS, 64, use_cache=False, **kw)


def test_windows_follow_the_documented_policy(model, tok):
    """A by-hand reference: context 16, so a stride is 4 new tokens and a window re-starts on
    its last 13 tokens when, at a stride's start, it holds more than 13."""
    span, keep = 4, 13
    ids, start = tok.encode(PROMPTS[3]), 0
    with torch.no_grad():
        for step in range(40):
            if step % span == 0 and len(ids) - start > keep:
                start = len(ids) - keep
            assert len(ids) - start <= 16
            ids.append(int(model(torch.tensor([ids[start:]]))[0, -1, :tok.vocab_size].argmax()))
    reference = tok.decode(ids[len(tok.encode(PROMPTS[3])):])
    for use_cache in (True, False):
        assert generate(model, tok, [PROMPTS[3]], 40, temperature=0, use_cache=use_cache,
                        stop_at_eot=False) == [reference]


def test_decode_steps_equal_full_recomputation_on_a_padded_batch(model, tok):
    """GPT.decode_step (the lean one-token path generate uses) gives each row's logits as a
    full forward of that row alone would; a subclass or a hooked model takes GPT.forward's
    module path and gives the same."""
    class PlainGPT(GPT):
        pass

    sub = PlainGPT(model.config).eval()
    sub.load_state_dict(model.state_dict())
    hooked = GPT(model.config).eval()
    hooked.load_state_dict(model.state_dict())
    calls = []
    hooked.layers[0].register_forward_hook(lambda *_: calls.append(1))
    ids = torch.randint(0, tok.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    for m in (model, sub, hooked):
        cache = KVCache(model.config, 2)
        cache.pad_mask = torch.ones(2, cache.max_len, dtype=torch.bool)
        cache.pad_mask[1, :3] = False  # row 1 is left-padded by 3
        with torch.inference_mode():
            m(ids[:, :6], cache=cache)
            for t in range(6, 12):
                step = m.decode_step(ids[:, t:t + 1], cache)
                for row, start in ((0, 0), (1, 3)):
                    full = model(ids[row:row + 1, start:t + 1])[0, -1]
                    torch.testing.assert_close(step[row], full, rtol=1e-5, atol=1e-5)
        assert cache.pos == 12
    assert len(calls) == 1 + 6  # the hooked model's block ran as a module on every step


def test_same_seed_same_text_other_seed_other_text(model, tok):
    a = generate(model, tok, PROMPTS, 40, temperature=1.0, seed=1)
    assert a == generate(model, tok, PROMPTS, 40, temperature=1.0, seed=1)
    assert all(x != y for x, y in zip(a, generate(model, tok, PROMPTS, 40, temperature=1.0, seed=2)))
    torch.manual_seed(5)  # seed=None draws from torch's global generator
    b = generate(model, tok, PROMPTS, 40)
    torch.manual_seed(5)
    assert b == generate(model, tok, PROMPTS, 40)


def test_top_k_1_is_greedy(model, tok):
    greedy = generate(model, tok, PROMPTS, 40, temperature=0)
    assert generate(model, tok, PROMPTS, 40, temperature=1.5, top_k=1, seed=3) == greedy


def test_top_p_edges(model, tok):
    greedy = generate(model, tok, PROMPTS, 40, temperature=0)
    for p in (0.0, 1e-9):
        assert generate(model, tok, PROMPTS, 40, temperature=1.0, top_p=p, seed=3) == greedy
    plain = generate(model, tok, PROMPTS, 40, temperature=1.0, seed=3)
    assert generate(model, tok, PROMPTS, 40, temperature=1.0, top_p=1.0, seed=3) == plain
    assert plain != greedy


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = torch.tensor([[0.5, 0.3, 0.2]]).log().expand(2000, 3)
    g = torch.Generator().manual_seed(0)
    assert set(sample_next(logits, top_p=0.6, generator=g).tolist()) == {0, 1}
    assert set(sample_next(logits, top_p=0.5, generator=g).tolist()) == {0}  # 0.5 reached
    assert set(sample_next(logits, top_p=0.85, generator=g).tolist()) == {0, 1, 2}
    assert set(sample_next(logits, top_k=2, generator=g).tolist()) == {0, 1}


def test_padding_rows_never_become_logits(tok):
    """A vocab that is no multiple of 64: the model's padding rows, even made huge, are no
    logit column, so they can never be sampled."""
    tok = Tokenizer.train([" ".join(PROMPTS) * 20 + "naïve café 日本語"], vocab_size=300)
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=32)
    assert cfg.padded_vocab_size > tok.vocab_size
    model = GPT(cfg).eval()
    rigged = GPT(cfg).eval()
    rigged.load_state_dict(model.state_dict())
    with torch.no_grad():
        rigged.lm_head.weight[tok.vocab_size:] = 100.0
    x = torch.tensor([tok.encode("The quick brown fox")])
    assert rigged(x).shape[-1] == tok.vocab_size
    assert torch.equal(rigged(x), model(x))
    assert generate(rigged, tok, PROMPTS, 30, temperature=1.0, seed=0) == \
        generate(model, tok, PROMPTS, 30, temperature=1.0, seed=0)


def test_stop_string_cuts_before_its_first_occurrence(model, tok):
    full = generate(model, tok, PROMPTS, 64, temperature=0)
    row = full[0]
    stop = row[20:23]
    cut = generate(model, tok, PROMPTS, 64, temperature=0, stop=[stop])
    assert cut[0] == row[:row.find(stop)]
    for got, whole in zip(cut, full):
        assert whole.startswith(got) and stop not in got
    earliest = generate(model, tok, PROMPTS[:1], 64, temperature=0, stop=[row[30:33], row[5:8]])
    assert earliest == [row[:min(row.find(row[30:33]), row.find(row[5:8]))]]


def test_end_of_text_ends_a_row(model, tok):
    """Find a seed whose samples contain end-of-text; with the stop the row ends just before."""
    for seed in range(50):
        through = generate(model, tok, PROMPTS, 40, temperature=2.0, seed=seed, stop_at_eot=False)
        if any(EOT in t for t in through):
            break
    else:
        pytest.fail("no end-of-text in 50 seeds")
    stopped = generate(model, tok, PROMPTS, 40, temperature=2.0, seed=seed)
    for s, t in zip(stopped, through):
        assert s == (t[:t.index(EOT)] if EOT in t else t)


def test_too_long_prompt_is_cropped_from_the_left_with_a_notice(model, tok):
    """Context 16: a prompt keeps its last 13 tokens, room for a stride of 4 new ones. Two
    prompts that differ only before their last 13 tokens must then continue alike."""
    tail = "\n\n" + "x" * 11  # 13 tokens: "\n\n" and 11 unmerged x's
    a, b = "alpha beta." + tail, "gamma gamma!" + tail
    assert tok.encode(a)[-13:] == tok.encode(b)[-13:] == tok.encode(tail)
    assert tok.encode(a)[-14] != tok.encode(b)[-14]
    with pytest.warns(UserWarning, match=r"prompt 0 has \d+ tokens, more than fit with room to "
                                         r"generate in the model's context of 16: cropped to its "
                                         r"last 13 tokens"):
        out_a = generate(model, tok, [a], 20, temperature=0)
    with pytest.warns(UserWarning):
        out_b = generate(model, tok, [b], 20, temperature=0)
    assert out_a == out_b == generate(model, tok, [tail], 20, temperature=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a prompt that fits: no notice
        generate(model, tok, [tail], 5, temperature=0)


def test_streamed_pieces_add_up_to_the_result(model, tok):
    for stop in (None, ["e"], ["the", "\n"]):
        pieces: dict[int, list[str]] = {}
        out = generate(model, tok, PROMPTS, 48, temperature=1.0, seed=4, stop=stop,
                       stream=lambda i, t: pieces.setdefault(i, []).append(t))
        assert ["".join(pieces.get(i, [])) for i in range(len(PROMPTS))] == out
        assert all(p for ps in pieces.values() for p in ps)  # no empty calls


def test_streaming_holds_back_half_characters_and_stop_prefixes(tok):
    """Feed a row the tokens of a multi-byte text one by one, as sampling would."""
    text = "naïve café 日本語 λόγος 🙂 end"
    ids = tok.encode(text)
    assert len(ids) > len(text)  # several characters span tokens
    pieces: list[str] = []
    row = _Row()
    for t in ids:
        _take(0, row, t, tok, [], lambda i, s: pieces.append(s), True)
    assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces)
    pieces.clear()
    row = _Row()
    for t in ids:
        _take(0, row, t, tok, ["λόγ"], lambda i, s: pieces.append(s), True)
    assert "".join(pieces) == row.final == "naïve café 日本語 "


def test_bad_arguments_are_one_line_errors(model, tok):
    for kw, msg in [({"temperature": -1}, "temperature=-1"), ({"top_k": 0}, "top_k=0"),
                    ({"top_p": 1.5}, "top_p=1.5"), ({"stop": [""]}, "stop strings")]:
        with pytest.raises(ValueError, match=msg):
            generate(model, tok, ["x"], 5, **kw)
    big = GPT(GPTConfig(vocab_size=256, block_size=8, n_layer=1, n_head=1, n_embd=8))
    with pytest.raises(ValueError, match="tokenizer has 320 tokens but the model's vocab_size is 256"):
        generate(big, tok, ["x"], 5)


def test_script_end_to_end(ckpt, tok, tmp_path):
    args = ["--prompt", "The", "--prompt", "In the beginning", "--max-new-tokens", "30",
            "--seed", "11", "--temperature", "1.0", "--top-k", "40", "--stop", "\n\n"]
    proc = subprocess.run([sys.executable, str(SCRIPT), str(ckpt.parent.parent), *args],
                          capture_output=True, text=True, env=quiet_env(tmp_path), cwd=REPO,
                          timeout=300)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    model, _, _ = load_for_inference(ckpt)
    texts = generate(model, tok, ["The", "In the beginning"], 30, temperature=1.0, top_k=40,
                     seed=11, stop=["\n\n"])
    assert proc.stdout == "The" + texts[0] + "\n" + "-" * 40 + "\nIn the beginning" + texts[1] + "\n"


def test_script_reads_stdin_and_reports_errors_in_one_line(ckpt, monkeypatch, capsys):
    main = runpy.run_path(str(SCRIPT), run_name="generate_script")["main"]
    monkeypatch.setattr(sys, "stdin", io.StringIO("Hello"))
    assert main([str(ckpt), "--max-new-tokens", "5", "--temperature", "0", "--no-cache"]) == 0
    model, tok, _ = load_for_inference(ckpt)
    assert capsys.readouterr().out == "Hello" + generate(model, tok, ["Hello"], 5, temperature=0)[0] + "\n"
    for argv, msg in [([str(ckpt), "--prompt", "x", "--top-p", "2"], "top_p=2.0"),
                      ([str(ckpt.parent / "nope"), "--prompt", "x"], "not a checkpoint")]:
        assert main(argv) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.startswith("error: ") and msg in captured.err
        assert captured.err.count("\n") == 1


def test_an_empty_prompt_samples_unconditionally_and_says_so(ckpt, monkeypatch, capsys):
    """--prompt "" (or an empty stdin) starts after an end-of-text token, with a note on stderr."""
    main = runpy.run_path(str(SCRIPT), run_name="generate_script")["main"]
    model, tok, _ = load_for_inference(ckpt)
    assert main([str(ckpt), "--prompt", "", "--max-new-tokens", "5", "--temperature", "0"]) == 0
    out = capsys.readouterr()
    assert out.out == generate(model, tok, [""], 5, temperature=0)[0] + "\n"
    assert out.err == ("note: the prompt is empty: sampling unconditionally (from an end-of-text "
                       "token, as a new document starts)\n")
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert main([str(ckpt), "--max-new-tokens", "5", "--temperature", "0"]) == 0
    assert "note: the prompt is empty" in capsys.readouterr().err
