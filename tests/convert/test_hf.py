"""tinylm.convert.hf against the real transformers, offline: tiny random Llamas built by transformers
itself (tied, GQA, a vocab that is no multiple of 64) and a real byte-level BPE wrapped in
PreTrainedTokenizerFast; logits, greedy text, the tie, and round trips compared exactly."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import (AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM,
                          PreTrainedTokenizerFast)

from conftest import corpus_text
from helpers import REPO, env
from tinylm.checkpoint import format as ckpt
from tinylm.checkpoint.load import load_for_inference
from tinylm.convert.hf import HFConvertError, export_to_hf, import_from_hf
from tinylm.data.tokenizer import EOT, Tokenizer
from tinylm.infer.generate import generate
from tinylm.model.config import GPTConfig
from tinylm.model.gpt import GPT

pytestmark = pytest.mark.usefixtures("one_thread")
TEXT = "Grüße aus Köln: naïve café, 日本語, λόγος 🙂 — the end."


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    Tokenizer.train([corpus_text(60_000, seed=3)], vocab_size=300).save(path)
    return path


def hf_llama(tmp: Path, tokenizer_file: Path, **overrides) -> Path:
    """A random LlamaForCausalLM saved with save_pretrained, and its tokenizer."""
    tok = Tokenizer.load(tokenizer_file)
    cfg = dict(vocab_size=tok.vocab_size, hidden_size=64, intermediate_size=160,
               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               max_position_embeddings=96, rms_norm_eps=1e-6, rope_theta=5000.0,
               tie_word_embeddings=True, eos_token_id=tok.eot_id, bos_token_id=tok.eot_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**{**cfg, **overrides})).eval()
    with torch.no_grad():  # peaked logits: greedy choices far from ties
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.1)
    out = tmp / "hf"
    model.save_pretrained(out)
    PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_file), eos_token=EOT,
                            bos_token=EOT).save_pretrained(out)
    return out


def test_import_gives_transformers_logits_and_greedy_text(tmp_path, tokenizer_file):
    hf_dir = hf_llama(tmp_path, tokenizer_file)
    out = import_from_hf(hf_dir, tmp_path / "tinylm")
    model, tok, cfg = load_for_inference(out)
    assert model.lm_head.weight is model.embed_tokens.weight  # tied: one Parameter
    assert model.config.kv_heads == 2 and model.config.vocab_size == tok.vocab_size == 300
    hf = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    ids = torch.randint(0, 300, (2, 96), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf(ids).logits, rtol=0, atol=1e-5)
        prompt = torch.tensor([tok.encode("The end of")])
        hf_ids = hf.generate(prompt, max_new_tokens=50, do_sample=False, min_new_tokens=50,
                             eos_token_id=None, pad_token_id=tok.eot_id)[0, prompt.size(1):]
    ours = generate(model, tok, ["The end of"], 50, temperature=0, stop_at_eot=False)[0]
    assert ours == tok.decode(hf_ids.tolist())  # 50 greedy tokens, the same text
    assert len(set(hf_ids.tolist())) > 5  # not one token repeated: the test has teeth


def load_and_report(path: Path, caplog, capfd):
    """from_pretrained, and everything transformers said while loading (its logger does not
    propagate to the root logger, and v5 prints a load report)."""
    import transformers

    transformers.logging.enable_propagation()
    try:
        with caplog.at_level(logging.INFO):
            model = AutoModelForCausalLM.from_pretrained(path).eval()
    finally:
        transformers.logging.disable_propagation()
    out, err = capfd.readouterr()
    return model, (" ".join(r.getMessage() for r in caplog.records) + out + err).lower()


def test_the_load_report_check_has_teeth(tmp_path, tokenizer_file, caplog, capfd):
    from safetensors.torch import load_file, save_file

    hf_dir = hf_llama(tmp_path, tokenizer_file, tie_word_embeddings=False)
    weights = load_file(hf_dir / "model.safetensors")
    del weights["lm_head.weight"]
    save_file(weights, hf_dir / "model.safetensors", metadata={"format": "pt"})
    _, said = load_and_report(hf_dir, caplog, capfd)
    assert "missing" in said  # the random-head case is visible to the check below


def test_export_of_a_trained_checkpoint_loads_in_transformers(tmp_path, tiny_run, caplog, capfd):
    step10 = tiny_run / "checkpoints" / "step-10"
    out = export_to_hf(tiny_run, tmp_path / "hf")  # a run dir: its newest checkpoint
    capfd.readouterr()
    hf, said = load_and_report(out, caplog, capfd)
    assert not any(word in said for word in ("missing", "unexpected", "newly initialized")), said
    assert hf.lm_head.weight is hf.model.embed_tokens.weight  # the tie survived the border
    model, tok, _ = load_for_inference(step10)
    ids = torch.randint(0, tok.vocab_size, (2, 32), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model(ids), rtol=0, atol=1e-5)
    hf_tok = AutoTokenizer.from_pretrained(out)
    assert hf_tok(TEXT, add_special_tokens=False)["input_ids"] == tok.encode(TEXT)
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is True
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == tok.eot_id


def test_tinylm_hf_tinylm_is_bitwise(tmp_path, tiny_run):
    step10 = tiny_run / "checkpoints" / "step-10"
    back = import_from_hf(export_to_hf(step10, tmp_path / "hf"), tmp_path / "back")
    a, _ = ckpt.read_weights(step10 / ckpt.MODEL_FILE)
    b, groups = ckpt.read_weights(back / ckpt.MODEL_FILE)
    assert sorted(a) == sorted(b) and groups == [["embed_tokens.weight", "lm_head.weight"]]
    for name in a:
        assert torch.equal(a[name].view(torch.uint8), b[name].view(torch.uint8)), name


def looped_checkpoint(tmp: Path, tokenizer_file: Path) -> Path:
    """A tinylm checkpoint of 5 depths over 3 unique blocks (blocks 1-2 run twice)."""
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=Tokenizer.load(tokenizer_file).vocab_size, block_size=64, n_layer=5,
                    n_head=4, n_embd=64, n_kv_head=2, layer_map=[0, 1, 2, 1, 2], init_std=0.1)
    out = tmp / "looped"
    out.mkdir()
    ckpt.write_checkpoint(out, GPT(cfg), {"model": cfg.to_dict()}, tokenizer_file, extra={"step": 0})
    return out


def test_a_looped_model_exports_unrolled_and_imports_shared_again(tmp_path, tokenizer_file, caplog,
                                                                  capfd):
    """Llama has one block per layer: the export writes every depth (and says how much bigger
    that is), transformers computes the same logits, and config.json's tinylm_layer_map lets
    the import share the blocks again, bitwise."""
    looped = looped_checkpoint(tmp_path, tokenizer_file)
    said = []
    out = export_to_hf(looped, tmp_path / "hf", say=said.append)
    assert said == ["unrolled the layer map: 5 depths over 3 unique blocks -> 5 Llama layers; "
                    "1.59x the tensors of the tinylm checkpoint (1.1 vs 0.7 MB in fp32)"]  # by hand:
    # block 49280, matrix 320x64, norm 64: (20480 + 5 x 49280 + 64) / (20480 + 3 x 49280 + 64)
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 5 and config["tinylm_layer_map"] == [0, 1, 2, 1, 2]
    capfd.readouterr()
    hf, report = load_and_report(out, caplog, capfd)
    assert not any(word in report for word in ("missing", "unexpected", "newly initialized")), report
    model, _ = ckpt.load_model(looped)
    ids = torch.randint(0, 300, (2, 40), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model(ids), rtol=0, atol=1e-5)
    back, _ = ckpt.load_model(import_from_hf(out, tmp_path / "back"))
    assert back.config.depth_map == (0, 1, 2, 1, 2) and back.layers[1] is back.layers[3]
    a, _ = ckpt.read_weights(looped / ckpt.MODEL_FILE)
    b, _ = ckpt.read_weights(tmp_path / "back" / ckpt.MODEL_FILE)
    assert sorted(a) == sorted(b) and all(torch.equal(a[n], b[n]) for n in a)


def test_an_import_refuses_a_layer_map_over_layers_that_differ(tmp_path, tokenizer_file):
    from safetensors.torch import load_file, save_file

    out = export_to_hf(looped_checkpoint(tmp_path, tokenizer_file), tmp_path / "hf", say=lambda s: None)
    weights = load_file(out / "model.safetensors")
    weights["model.layers.3.mlp.down_proj.weight"] += 1  # depth 3 no longer equals depth 1
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(HFConvertError, match=r"tinylm_layer_map=\[0, 1, 2, 1, 2\] shares blocks, "
                                             r"but the file's layers differ"):
        import_from_hf(out, tmp_path / "back")
    assert not (tmp_path / "back").exists()


def test_heads_wider_than_hidden_over_heads_import_exactly(tmp_path, tokenizer_file):
    """head_dim is any even width (here 32 x 4 heads = 128 > hidden 64), as Llama allows."""
    hf_dir = hf_llama(tmp_path, tokenizer_file, head_dim=32)
    model, _, _ = load_for_inference(import_from_hf(hf_dir, tmp_path / "wide"))
    assert model.config.head_dim == 32 and model.layers[0].self_attn.o_proj.weight.shape == (64, 128)
    hf = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    ids = torch.randint(0, 300, (2, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf(ids).logits, rtol=0, atol=1e-5)
    back = export_to_hf(tmp_path / "wide", tmp_path / "wide-hf")
    assert json.loads((back / "config.json").read_text())["head_dim"] == 32


def test_an_untied_model_exports_both_matrices(tmp_path, tokenizer_file):
    hf_dir = hf_llama(tmp_path, tokenizer_file, tie_word_embeddings=False)
    out = import_from_hf(hf_dir, tmp_path / "untied")
    model, _, _ = load_for_inference(out)
    assert model.lm_head.weight is not model.embed_tokens.weight
    again = export_to_hf(out, tmp_path / "hf2")
    assert json.loads((again / "config.json").read_text())["tie_word_embeddings"] is False
    hf = AutoModelForCausalLM.from_pretrained(again)
    assert hf.lm_head.weight is not hf.model.embed_tokens.weight


def test_tie_guards_at_the_border(tmp_path, tokenizer_file):
    from safetensors.torch import load_file, save_file

    hf_dir = hf_llama(tmp_path, tokenizer_file, tie_word_embeddings=False)
    weights = load_file(hf_dir / "model.safetensors")
    config = json.loads((hf_dir / "config.json").read_text())
    # config says tied, the file holds two different matrices
    (hf_dir / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    with pytest.raises(HFConvertError, match="tie_word_embeddings is true but lm_head.weight differs"):
        import_from_hf(hf_dir, tmp_path / "a")
    # config says untied, lm_head is missing: transformers would make a random head
    (hf_dir / "config.json").write_text(json.dumps(config))
    save_file({k: v for k, v in weights.items() if k != "lm_head.weight"}, hf_dir / "model.safetensors")
    with pytest.raises(HFConvertError, match="tie_word_embeddings is false and there is no lm_head"):
        import_from_hf(hf_dir, tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize("field, value, message", [
    ("hidden_act", "gelu", "hidden_act='gelu': tinylm computes hidden_act='silu' only"),
    ("attention_bias", True, "attention_bias=True: tinylm computes attention_bias=False only"),
    ("model_type", "mistral", "model_type='mistral': only Llama-architecture"),
    ("rope_parameters", {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0},
     "rope_type='llama3': rotary scaling is not supported"),
])
def test_unsupported_fields_are_one_line_errors_exit_2(tmp_path, tokenizer_file, field, value,
                                                       message):
    hf_dir = hf_llama(tmp_path, tokenizer_file)
    config = json.loads((hf_dir / "config.json").read_text())
    (hf_dir / "config.json").write_text(json.dumps({**config, field: value}))
    proc = subprocess.run([sys.executable, "-m", "tinylm.cli", "convert", "from-hf", str(hf_dir),
                           str(tmp_path / "out")], capture_output=True, text=True,
                          env=env(tmp_path), cwd=REPO, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("error: ") and message in proc.stderr, proc.stderr


@pytest.mark.slow
def test_an_imported_tied_teacher_distils_into_a_student_with_its_own_tie(tmp_path, tokenizer_file):
    """Import a tied Llama, make a 1-layer student of it, and train the student on the
    teacher's tokenizer (data.tokenizer) with distillation from the imported teacher."""
    from accelerate.state import AcceleratorState

    from tinylm.convert.student import write_student
    from tinylm.train.config import load_config
    from tinylm.train.trainer import train

    teacher = import_from_hf(hf_llama(tmp_path, tokenizer_file), tmp_path / "teacher")
    _, student, _ = write_student(teacher, "first:1", tmp_path / "student")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(corpus_text(60_000, seed=9), encoding="utf-8")
    cfg = load_config("tiny", [f"run_dir={tmp_path / 'run'}", f"data.dir={tmp_path / 'data'}",
                               f"data.source={corpus}", f"data.tokenizer={teacher}",
                               f"checkpoint.init_from={tmp_path / 'student'}",
                               f"distill.teacher={teacher}", "optim.max_steps=6",
                               "optim.batch_size=4", "log.wandb=disabled", "log.plot=false"])
    before, _ = ckpt.load_model(teacher)
    try:
        summary = train(cfg)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    trained, _ = ckpt.load_model(summary["checkpoint"])
    assert trained.config.n_layer == 1 and trained.config.kv_heads == 2
    assert trained.lm_head.weight is trained.embed_tokens.weight  # its own tie
    after, _ = ckpt.load_model(teacher)
    assert not torch.equal(trained.embed_tokens.weight, after.embed_tokens.weight)  # it trained
    for a, b in zip(before.parameters(), after.parameters()):  # the teacher never moved
        assert torch.equal(a, b)
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("distill_kl" in r for r in records if r["kind"] == "train")


def test_a_damaged_hf_directory_is_one_line_naming_the_file(tmp_path, tokenizer_file):
    """A config.json that holds a list or no JSON, one without hidden_size, a truncated
    model.safetensors: each a one-line HFConvertError (exit 2 from the command), nothing written."""
    hf_dir = hf_llama(tmp_path, tokenizer_file)
    config = json.loads((hf_dir / "config.json").read_text())
    cases = [("config.json", json.dumps([config]), "config.json: expected a JSON object, got a list"),
             ("config.json", "{not json", "config.json: not valid JSON"),
             ("config.json", json.dumps({k: v for k, v in config.items() if k != "hidden_size"}),
              "config.json: no hidden_size in config.json")]
    for name, text, message in cases:
        (hf_dir / name).write_text(text)
        with pytest.raises(HFConvertError, match=message):
            import_from_hf(hf_dir, tmp_path / "out")
    (hf_dir / "config.json").write_text(json.dumps(config))
    weights = hf_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    proc = subprocess.run([sys.executable, "-m", "tinylm.cli", "convert", "from-hf", str(hf_dir),
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=120,
                          env=env(tmp_path), cwd=tmp_path)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-2000:]
    assert "a weight file is corrupt or truncated" in proc.stderr and not (tmp_path / "out").exists()
