"""tinylm.convert.student and scripts/make_student.py: layer selection, copied blocks, the student's own
tie, width reduction, and a real checkpoint made from a real (tiny) trained teacher."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import torch

from helpers import REPO, env, write_corpus
from tinylm.checkpoint.format import CheckpointError, find_checkpoints, load_model
from tinylm.checkpoint.init_from import init_from, init_model_config
from tinylm.checkpoint.load import load_for_inference
from tinylm.convert.student import make_student, select_layers
from tinylm.data.tokenizer import Tokenizer, TokenizerMismatchError
from tinylm.eval.loss import evaluate_checkpoint
from tinylm.model.config import GPTConfig
from tinylm.model.gpt import GPT
from tinylm.sharing.tying import check_ties
from tinylm.sharing.weights import get_weights

TEACHER_CFG = GPTConfig(vocab_size=64, block_size=16, n_layer=4, n_head=2, n_embd=32)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors, one thread


@pytest.fixture
def teacher() -> GPT:
    """A teacher whose every tensor (norm scales too) is distinct random data, so a copy from
    the wrong place cannot pass for a right one."""
    torch.manual_seed(0)
    t = GPT(TEACHER_CFG)
    with torch.no_grad():
        for p in t.parameters():
            p.normal_(0.0, 0.1)
    return t.eval()


# -- select_layers ---------------------------------------------------------------------------


@pytest.mark.parametrize("spec, n, want", [
    ("every:2", 6, [0, 2, 4]),
    ("every:3", 7, [0, 3, 6]),
    ("every:1", 3, [0, 1, 2]),
    ("first:2", 6, [0, 1]),
    ("last:2", 6, [4, 5]),
    ("last:6", 6, [0, 1, 2, 3, 4, 5]),
    ("0,2,4,7", 8, [0, 2, 4, 7]),
    (" 1, 3 ", 4, [1, 3]),
    ("5", 6, [5]),
])
def test_select_layers(spec, n, want):
    assert select_layers(spec, n) == want
    assert select_layers(spec, n, len(want)) == want


@pytest.mark.parametrize("spec, n, student, message", [
    ("every:0", 6, None, "layers='every:0': 0 must be positive"),
    ("every:x", 6, None, "layers='every:x': 'x' is not an integer"),
    ("first:7", 6, None, "layers='first:7': 7 exceeds the teacher's 6 layers"),
    ("last:-1", 6, None, "layers='last:-1': -1 must be positive"),
    ("middle:2", 6, None, "layers='middle:2': expected every:K, first:K, last:K or a list"),
    ("", 6, None, "layers='': expected every:K"),
    ("0,,2", 6, None, "layers='0,,2': expected every:K"),
    ("0,a", 6, None, "layers='0,a': 'a' is not a layer index"),
    ("0,6", 6, None, "layers='0,6': layer 6 is out of range for a teacher with 6 layers (0..5)"),
    ("-1", 6, None, "layers='-1': layer -1 is out of range"),
    ("0,2,2", 6, None, "layers='0,2,2': layer 2 is selected more than once"),
    ("3,1", 6, None, "layers='3,1': indices must be increasing"),
    ("every:2", 6, 2, "layers='every:2' selects 3 layers [0, 2, 4] but the student has 2"),
    ("0,1", 6, 3, "layers='0,1' selects 2 layers [0, 1] but the student has 3"),
    ("first:1", 0, None, "teacher_layers=0 must be positive"),
])
def test_select_layers_errors(spec, n, student, message):
    with pytest.raises(ValueError) as e:
        select_layers(spec, n, student)
    assert str(e.value).startswith(message)
    assert "\n" not in str(e.value)


# -- make_student ----------------------------------------------------------------------------


def test_make_student_copies_selected_blocks_in_order(teacher):
    student, report = make_student(teacher, "every:2")
    assert student.config.n_layer == 2 and student.config.n_embd == 32
    t, s = teacher.state_dict(), student.state_dict()
    for j, i in enumerate([0, 2]):
        for rest in ("input_layernorm.weight", "self_attn.qkv_proj.weight", "self_attn.o_proj.weight",
                     "post_attention_layernorm.weight", "mlp.gate_up_proj.weight", "mlp.down_proj.weight"):
            assert torch.equal(s[f"layers.{j}.{rest}"], t[f"layers.{i}.{rest}"]), (j, i, rest)
    for name in ("embed_tokens.weight", "lm_head.weight", "norm.weight"):
        assert torch.equal(s[name], t[name])

    x = torch.randint(0, 64, (2, 10))
    logits, loss = student(x, x)
    assert logits.shape == (2, 10, 64) and torch.isfinite(loss)

    copied = {(c.source, c.target) for c in report.copied}
    assert ("layers.2.mlp.down_proj.weight", "layers.1.mlp.down_proj.weight") in copied
    assert ("embed_tokens.weight", "embed_tokens.weight") in copied
    assert ("lm_head.weight", "lm_head.weight") in copied
    assert ("norm.weight", "norm.weight") in copied
    skipped = dict(report.skipped)
    assert skipped["layers.3.self_attn.qkv_proj.weight"] == "block 3 not selected"
    assert not any(n.startswith(("layers.0.", "layers.2.")) for n in skipped)
    # every teacher tensor is accounted for, exactly once
    named = [c.source for c in report.copied] + list(skipped)
    assert sorted(named) == sorted(n for n, _ in teacher.named_parameters(remove_duplicate=False))
    assert report.missing == [] and report.unexpected == []
    assert "block 3 not selected" in str(report) and "tie group" in str(report)


def test_all_layers_student_computes_what_the_teacher_does(teacher):
    student, _ = make_student(teacher, "every:1")
    student.eval()
    x = torch.randint(0, 64, (2, 12))
    assert torch.allclose(student(x), teacher(x), atol=1e-6, rtol=0)


def test_student_tie_is_its_own_and_independent(teacher):
    student, _ = make_student(teacher, "last:2")
    assert student.lm_head.weight is student.embed_tokens.weight
    check_ties(student, expected=[["embed_tokens.weight", "lm_head.weight"]])
    teacher_ids = {id(p) for p in teacher.parameters()}
    teacher_ptrs = {p.untyped_storage().data_ptr() for p in teacher.parameters()}
    for p in student.parameters():
        assert id(p) not in teacher_ids and p.untyped_storage().data_ptr() not in teacher_ptrs

    before = get_weights(teacher)
    student.train()
    opt = torch.optim.AdamW(student.parameters(), lr=1e-2)
    x = torch.randint(0, 64, (2, 10))
    _, loss = student(x, x)
    loss.backward()
    opt.step()
    after = get_weights(teacher)
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert not torch.equal(student.embed_tokens.weight, teacher.embed_tokens.weight)
    assert student.lm_head.weight is student.embed_tokens.weight


def test_width_reduction_keeps_a_prefix_of_channels_heads_and_units(teacher):
    student, report = make_student(teacher, "first:2", n_embd=16)
    c = student.config
    assert (c.n_embd, c.n_head, c.head_dim, c.n_layer) == (16, 1, TEACHER_CFG.head_dim, 2)
    H, h = TEACHER_CFG.hidden_dim, c.hidden_dim
    assert h == 64 and H == 128  # Llama's 8/3 rule at each width
    t, s = teacher.state_dict(), student.state_dict()
    assert torch.equal(s["embed_tokens.weight"], t["embed_tokens.weight"][:, :16])
    assert torch.equal(s["norm.weight"], t["norm.weight"][:16])
    qkv = t["layers.1.self_attn.qkv_proj.weight"]
    assert torch.equal(s["layers.1.self_attn.qkv_proj.weight"],
                       torch.cat([qkv[0:16, :16], qkv[32:48, :16], qkv[64:80, :16]]))
    assert torch.equal(s["layers.1.self_attn.o_proj.weight"], t["layers.1.self_attn.o_proj.weight"][:16, :16])
    gu = t["layers.0.mlp.gate_up_proj.weight"]
    assert torch.equal(s["layers.0.mlp.gate_up_proj.weight"], torch.cat([gu[:h, :16], gu[H:H + h, :16]]))
    assert torch.equal(s["layers.0.mlp.down_proj.weight"], t["layers.0.mlp.down_proj.weight"][:16, :h])
    assert torch.equal(s["layers.0.input_layernorm.weight"], t["layers.0.input_layernorm.weight"][:16])
    assert student.lm_head.weight is student.embed_tokens.weight
    x = torch.randint(0, 64, (2, 10))
    assert student(x).shape == (2, 10, 64)
    note = {c.source: c.note for c in report.copied}["layers.1.self_attn.qkv_proj.weight"]
    assert note.startswith("heads 0..0 of q, k, v")


@pytest.mark.parametrize("n_embd, message", [
    (64, "n_embd=64: wider than the teacher's 32"),
    (24, "n_embd=24: must be a positive multiple of the teacher's head_dim 16"),
    (0, "n_embd=0: must be a positive multiple"),
])
def test_width_reduction_errors(teacher, n_embd, message):
    with pytest.raises(ValueError) as e:
        make_student(teacher, "first:2", n_embd=n_embd)
    assert str(e.value).startswith(message)


# -- scripts/make_student.py on a real trained checkpoint -----------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A real tiny teacher: scripts/train.py for 6 steps on a small local corpus."""
    tmp = tmp_path_factory.mktemp("teacher")
    corpus = write_corpus(tmp / "corpus.txt", 40_000)
    cmd = [sys.executable, str(REPO / "scripts" / "train.py"), "configs/tiny.yaml",
           f"run_dir={tmp / 'run'}", f"data.dir={tmp / 'data'}", f"data.source={corpus}",
           "optim.max_steps=6", "log.wandb=disabled", "data.vocab_size=320", "log.plot=false",
           "model.n_layer=3", "eval.interval=0", "checkpoint.interval=0"]
    e = {**env(tmp), "OMP_NUM_THREADS": "1"}  # a tiny model: threads only contend
    p = subprocess.run(cmd, capture_output=True, text=True, env=e, cwd=REPO, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return tmp / "run"


def _script():
    spec = importlib.util.spec_from_file_location("make_student_script",
                                                  REPO / "scripts" / "make_student.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_make_student_script_writes_a_loadable_checkpoint(trained, tmp_path, capsys):
    out = tmp_path / "student"
    assert _script().main([str(trained), "--layers", "every:2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "make_student (layers every:2 -> teacher depths [0, 2])" in printed
    assert "block 1 not selected" in printed and f"wrote {out}" in printed
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "manifest.json", "model.safetensors",
                                                     "tokenizer.json"]

    teacher_dir = find_checkpoints(trained)[-1]
    teacher, teacher_cfg = load_model(teacher_dir)
    student, cfg = load_model(out)
    assert student.lm_head.weight is student.embed_tokens.weight
    check_ties(student, expected=cfg["ties"])
    assert cfg["model"]["n_layer"] == 2 and cfg["train"]["model"] == cfg["model"]
    assert cfg["train"]["optim"] == teacher_cfg["train"]["optim"]  # the teacher's recipe
    assert cfg["step"] == 0 and cfg["student_of"]["teacher_layers"] == [0, 2]
    t, s = teacher.state_dict(), student.state_dict()
    assert torch.equal(s["layers.1.mlp.down_proj.weight"], t["layers.2.mlp.down_proj.weight"])
    assert torch.equal(s["embed_tokens.weight"], t["embed_tokens.weight"])

    # what evaluate.py and generate.py do with it: recorded val split, tokenizer check
    result = evaluate_checkpoint(out)
    assert result["step"] == 0 and result["tokens"] > 0 and result["loss"] > 0
    _, tokenizer, _ = load_for_inference(out)
    assert tokenizer.vocab_size == student.config.vocab_size

    # what a run with checkpoint.init_from=<out> does
    model = GPT(init_model_config(out, vocab_size=student.config.vocab_size))
    report = init_from(model, out, teacher_dir / "tokenizer.json")
    assert report.missing == [] and model.lm_head.weight is model.embed_tokens.weight
    assert all(torch.equal(model.state_dict()[n], v) for n, v in s.items())


def test_make_student_script_narrow(trained, tmp_path, capsys):
    out = tmp_path / "narrow"
    assert _script().main([str(trained), "--layers", "last:1", "--out", str(out), "--n-embd", "16"]) == 0
    student, cfg = load_model(out)
    assert (cfg["model"]["n_embd"], cfg["model"]["n_head"], cfg["model"]["n_layer"]) == (16, 1, 1)
    assert student.lm_head.weight is student.embed_tokens.weight


@pytest.mark.parametrize("case, args, message", [
    ("bad-layers", ["--layers", "0,9"], "error: layers='0,9': layer 9 is out of range"),
    ("bad-width", ["--layers", "every:2", "--n-embd", "20"], "error: n_embd=20: must be a positive multiple"),
    ("occupied", ["--layers", "every:2"], "error: {out}: exists and is not an empty directory"),
    ("no-teacher", ["--layers", "every:2"], "error: {teacher}: not a checkpoint"),
    ("no-layers", [], "error: the following arguments are required: --layers"),
])
def test_make_student_script_errors_are_one_line_exit_2(trained, tmp_path, capsys, case, args, message):
    out, teacher = tmp_path / "out", trained
    if case == "occupied":
        out.mkdir()
        (out / "something").write_text("keep me")
    if case == "no-teacher":
        teacher = tmp_path / "nowhere"
    argv = [str(teacher), *args, "--out", str(out)]
    if case == "no-layers":  # argparse's own error, made one line
        with pytest.raises(SystemExit) as e:
            _script().main(argv)
        assert e.value.code == 2
    else:
        assert _script().main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(message.format(out=out, teacher=teacher)) and err.count("\n") == 1, err
    if case == "occupied":
        assert [p.name for p in out.iterdir()] == ["something"]
    else:
        assert not out.exists()
    assert not (tmp_path / ".out.tmp").exists()


def test_init_from_refuses_other_tokenizer_and_other_architecture(trained, tmp_path):
    out = tmp_path / "student"
    assert _script().main([str(trained), "--layers", "first:1", "--out", str(out)]) == 0
    other_tok = tmp_path / "other.json"
    Tokenizer.train(["completely different text " * 50], vocab_size=300).save(other_tok)
    vocab = load_model(out)[1]["model"]["vocab_size"]
    with pytest.raises(TokenizerMismatchError, match=f"{out / 'tokenizer.json'}.*{other_tok}"):
        init_from(GPT(init_model_config(out, vocab)), out, other_tok)
    wrong = GPTConfig(**{**init_model_config(out).to_dict(), "n_layer": 2})
    with pytest.raises(CheckpointError, match=r"no tensor for layers\.1\."):
        init_from(GPT(wrong), out, out / "tokenizer.json")
    with pytest.raises(CheckpointError, match=f"vocab_size {vocab}, but this run's tokenizer gives 64"):
        init_model_config(out, vocab_size=64)


def test_a_student_of_a_looped_teacher_shares_what_its_depths_shared():
    """Teacher: 4 depths over 2 blocks (cycle:2 = [0, 1, 0, 1]). every:2 takes depths 0 and 2,
    which run one teacher block: the student runs one block twice (layer_map [0, 0]), copied
    once; first:2 takes two different blocks: a plain student."""
    from tinylm.sharing.tying import shared_modules

    torch.manual_seed(0)
    teacher = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=4, n_head=2, n_embd=32,
                            layer_map="cycle:2"))
    student, report = make_student(teacher, "every:2")
    assert student.config.depth_map == (0, 0) and shared_modules(student) == [["layers.0", "layers.1"]]
    assert torch.equal(student.layers[1].mlp.down_proj.weight, teacher.layers[2].mlp.down_proj.weight)
    assert student.num_params() == teacher.num_params() - sum(p.numel() for p in teacher.layers[1].parameters())
    assert str(report).startswith("make_student (layers every:2 -> teacher depths [0, 2], which run "
                                  "its unique blocks [0, 0], so the student's layer_map is [0, 0])")
    plain, report = make_student(teacher, "first:2")
    assert plain.config.layer_map is None and shared_modules(plain) == []
    assert "so the student's layer_map is none (nothing shared)" in str(report)
