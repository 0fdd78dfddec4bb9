"""tinylm.train.distill: the loss's limits (alpha 0 and 1, equal models), masking, vocab agreement,
where gradients go, and the frozen teacher loaded from a real checkpoint."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from helpers import write_corpus
from tinylm.checkpoint.format import write_checkpoint
from tinylm.data.tokenizer import Tokenizer, TokenizerMismatchError, require_same_tokenizer
from tinylm.model.config import GPTConfig
from tinylm.model.gpt import GPT
from tinylm.train.distill import DistillConfig, distill_forward, distill_loss, load_teacher

V = 64


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors, one thread


def gpt(seed: int, n_layer: int = 2, vocab_size: int = V) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab_size, block_size=16, n_layer=n_layer, n_head=2, n_embd=16))


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens and targets with some padding (-100) positions, as EvalBlocks/packing make."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, V, (3, 10), generator=g)
    y = torch.randint(0, V, (3, 10), generator=g)
    y[0, -3:] = -100
    y[2, :4] = -100
    return x, y


def kl_by_hand(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, T: float) -> torch.Tensor:
    """mean over non-padding positions of sum_v p_t (log p_t - log p_s), at temperature T."""
    keep = y != -100
    p_t = torch.softmax(t[keep].double() / T, -1)
    log_s = torch.log_softmax(s[keep].double() / T, -1)
    return (p_t * (p_t.log() - log_s)).sum(-1).mean()


def test_alpha_0_is_the_models_own_cross_entropy():
    student, teacher = gpt(0), gpt(1)
    x, y = batch()
    logits, ce = student(x, y)
    loss, parts = distill_loss(logits, teacher(x), y, alpha=0.0, temperature=2.0)
    assert torch.equal(loss, ce) and torch.equal(parts["ce"], ce.detach())


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0])
def test_alpha_1_is_T_squared_times_kl(T):
    _, y = batch()
    g = torch.Generator().manual_seed(0)
    s = torch.randn(*y.shape, V, generator=g) * 3  # logits of two confident, different models
    t = torch.randn(*y.shape, V, generator=g) * 3
    loss, parts = distill_loss(s, t, y, alpha=1.0, temperature=T)
    want = T**2 * kl_by_hand(s, t, y, T)
    assert want > 0.1
    assert math.isclose(loss.item(), want.item(), rel_tol=1e-5)
    assert math.isclose(parts["kl"].item(), want.item() / T**2, rel_tol=1e-5)
    mixed, _ = distill_loss(s, t, y, alpha=0.25, temperature=T)
    assert math.isclose(mixed.item(), 0.25 * want.item() + 0.75 * parts["ce"].item(), rel_tol=1e-5)


def test_kl_is_zero_when_student_is_teacher():
    x, y = batch()
    m = gpt(0)
    logits = m(x)
    loss, parts = distill_loss(logits, logits.detach().clone(), y, alpha=1.0, temperature=2.0)
    assert abs(parts["kl"].item()) < 1e-6 and abs(loss.item()) < 1e-5
    other, _ = distill_loss(logits, gpt(1)(x), y, alpha=1.0, temperature=2.0)
    assert other.item() > 1e-3


def test_padding_positions_count_in_neither_term():
    x, y = batch()
    s, t = gpt(0)(x).detach(), gpt(1)(x).detach()
    base, base_parts = distill_loss(s, t, y, alpha=0.5, temperature=2.0)
    s2, t2 = s.clone(), t.clone()
    s2[y == -100] = torch.randn_like(s2[y == -100]) * 50
    t2[y == -100] = torch.randn_like(t2[y == -100]) * 50
    loss, parts = distill_loss(s2, t2, y, alpha=0.5, temperature=2.0)
    assert torch.equal(loss, base) and torch.equal(parts["kl"], base_parts["kl"])


def test_logits_of_different_vocabularies_are_refused():
    x, y = batch()
    s, t = gpt(0)(x), gpt(1)(x)
    with pytest.raises(ValueError, match="disagree"):
        distill_loss(s, t[..., :-1], y, alpha=0.7, temperature=2.0)


def test_gradient_reaches_the_student_only():
    student, teacher = gpt(0), gpt(1, n_layer=3)  # teacher NOT frozen here: the loss must be
    student.train()
    x, y = batch()
    loss, parts = distill_forward(student, teacher, x, y, DistillConfig(alpha=0.5, temperature=2.0))
    loss.backward()
    for name, p in student.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    for name, p in teacher.named_parameters():
        assert p.grad is None, name
    t_logits = teacher(x).detach().requires_grad_(True)  # even a grad-tracking teacher tensor
    s_logits = student(x)
    distill_loss(s_logits, t_logits, y, 1.0, 2.0)[0].backward()
    assert t_logits.grad is None


def test_distillation_moves_the_student_toward_the_teacher():
    student, teacher = gpt(0, n_layer=1), gpt(1, n_layer=3).requires_grad_(False).eval()
    opt = torch.optim.AdamW(student.parameters(), lr=1e-2)
    x, y = batch()
    cfg = DistillConfig(alpha=1.0, temperature=1.0)
    first = None
    for _ in range(15):
        loss, parts = distill_forward(student, teacher, x, y, cfg)
        first = parts["kl"].item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert parts["kl"].item() < 0.5 * first


def test_shape_mismatch_is_an_error():
    x, y = batch()
    s = gpt(0)(x)
    with pytest.raises(ValueError, match=r"student logits \(3, 10, 64\), teacher logits \(3, 9, 64\)"):
        distill_loss(s, s[:, :9], y, 0.5, 2.0)


def test_distill_config_validates_and_is_an_omegaconf_section():
    assert DistillConfig() == DistillConfig(teacher="", alpha=0.5, temperature=2.0)
    with pytest.raises(ValueError, match=r"distill\.alpha=1\.5: expected 0\.\.1"):
        DistillConfig(alpha=1.5)
    with pytest.raises(ValueError, match=r"distill\.temperature=0\.0: must be positive"):
        DistillConfig(temperature=0.0)
    cfg = OmegaConf.merge(OmegaConf.structured(DistillConfig), OmegaConf.from_dotlist(["alpha=0.9"]))
    assert OmegaConf.to_object(cfg) == DistillConfig(alpha=0.9)
    bad = OmegaConf.merge(OmegaConf.structured(DistillConfig), OmegaConf.from_dotlist(["alpha=2"]))
    with pytest.raises(ValueError):
        OmegaConf.to_object(bad)


# -- load_teacher on a real checkpoint ------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    """Two real byte-level BPE tokenizers trained on different text."""
    tmp = tmp_path_factory.mktemp("tok")
    text = write_corpus(tmp / "corpus.txt", 20_000).read_text()
    a, b = tmp / "a.json", tmp / "b.json"
    Tokenizer.train([text], vocab_size=300).save(a)
    Tokenizer.train([text[::-1]], vocab_size=300).save(b)
    return a, b


@pytest.fixture
def teacher_run(tmp_path, tokenizers):
    """run/checkpoints/step-3 holding a teacher of tokenizer a's 300 tokens."""
    ckpt = tmp_path / "run" / "checkpoints" / "step-3"
    ckpt.mkdir(parents=True)
    model = gpt(7, n_layer=3, vocab_size=300)
    write_checkpoint(ckpt, model, {}, tokenizers[0], trainer_state={"step": 3}, extra={"step": 3})
    return tmp_path / "run", model


def test_load_teacher_is_frozen_in_eval_mode(teacher_run, tokenizers):
    run, original = teacher_run
    teacher = load_teacher(run, "cpu", student_vocab_size=300, tokenizer_path=tokenizers[0])
    assert not teacher.training and all(not m.training for m in teacher.modules())
    assert all(not p.requires_grad for p in teacher.parameters())
    assert teacher.lm_head.weight is teacher.embed_tokens.weight
    x = torch.randint(0, 300, (2, 8))
    assert torch.equal(teacher(x), original.eval()(x))
    assert teacher(x).grad_fn is None  # no graph is built through it


def test_tokenizer_mismatch_names_both_files(teacher_run, tokenizers):
    run, _ = teacher_run
    a = run / "checkpoints" / "step-3" / "tokenizer.json"
    with pytest.raises(TokenizerMismatchError) as e:
        load_teacher(run, "cpu", student_vocab_size=300, tokenizer_path=tokenizers[1])
    assert isinstance(e.value, ValueError)
    assert str(e.value) == (f"tokenizer mismatch: {a} (300 tokens) and {tokenizers[1]} (300 tokens) "
                            "are different tokenizers, so the same id means different tokens")
    require_same_tokenizer(a, tokenizers[0])  # the copy in the checkpoint is the same tokenizer


def test_student_vocab_not_the_tokenizers(teacher_run, tokenizers):
    run, _ = teacher_run
    with pytest.raises(ValueError, match=r"300 tokens, but the teacher's vocab_size is 300 and "
                                         r"the student's 256"):
        load_teacher(run, "cpu", student_vocab_size=256, tokenizer_path=tokenizers[0])
