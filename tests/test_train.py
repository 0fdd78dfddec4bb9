"""The training loop, in process, one process: loss, files, eval identity, resume, stopping."""

from __future__ import annotations

import copy
import json
import math
import os
import signal

import pytest
import torch
from accelerate.state import AcceleratorState
from safetensors import safe_open

from helpers import tiny_overrides, write_corpus
from tinylm import checkpoint as ckpt
from tinylm.config import load_config
from tinylm.data import EvalBlocks
from tinylm.evaluate import evaluate
from tinylm.model import GPT
from tinylm.train import TrainHooks, TrainingDiverged, train


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus") / "corpus.txt")


@pytest.fixture(autouse=True)
def fresh_accelerator_state(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def run(tmp_path, corpus, hooks=None, **overrides):
    cfg = load_config("configs/tiny.yaml", tiny_overrides(tmp_path, corpus, **overrides))
    return train(cfg, hooks), cfg


def test_loss_goes_down_and_run_files_are_written(tmp_path, corpus):
    cfg = load_config("configs/tiny.yaml", tiny_overrides(tmp_path, corpus, **{"optim.max_steps": 40}))
    given = copy.deepcopy(cfg)
    summary = train(cfg)
    assert cfg == given  # the config passed in is never changed (vocab_size is the trainer's)
    run_dir = tmp_path / "run"
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_losses = [r["loss"] for r in records if r["kind"] == "train"]
    assert train_losses[-1] < train_losses[0] - 0.5
    assert (run_dir / "loss.png").stat().st_size > 1000
    saved = load_config(run_dir / "config.yaml")  # the resolved config: the tokenizer's vocab
    assert saved.model.n_layer == 2 and saved.model.vocab_size == 320 != cfg.model.vocab_size
    assert [p.name for p in sorted((run_dir / "checkpoints").iterdir())] == ["step-30", "step-40"]
    final = run_dir / "checkpoints" / "step-40"
    with safe_open(str(final / ckpt.MODEL_FILE), "pt") as f:  # the tie group is stored once
        assert "embed_tokens.weight" in f.keys() and "lm_head.weight" not in f.keys()
    assert json.loads((final / ckpt.CONFIG_FILE).read_text())["ties"] == [
        ["embed_tokens.weight", "lm_head.weight"]]
    model, _ = ckpt.load_model(final)
    assert model.lm_head.weight is model.embed_tokens.weight
    assert summary["num_processes"] == 1 and summary["val"]["tokens"] > 0
    assert math.isclose(summary["val"]["perplexity"], math.exp(summary["val"]["loss"]), rel_tol=1e-9)


def test_eval_uses_the_very_module_being_trained(tmp_path, corpus):
    stepped, evaluated, snapshots = [], [], {}

    def after_step(model, step):
        stepped.append(model)
        snapshots[step] = {k: v.clone() for k, v in model.state_dict().items()}

    def after_eval(model, result, step):
        evaluated.append((model, result, step, model.training))

    run(tmp_path, corpus, TrainHooks(after_step=after_step, after_eval=after_eval),
        **{"optim.max_steps": 12, "eval.interval": 10, "eval.max_batches": 0})
    model, result, step, training = evaluated[0]
    assert step == 10 and model is stepped[0] and all(m is model for m in stepped)
    assert training  # evaluate() put it back in train mode
    # the eval at step 10 reflects step 10's weights, not step 9's
    data = ckpt.read_config(tmp_path / "run" / "checkpoints" / "step-12")
    blocks = EvalBlocks(os.path.join(data["data_dir"], "val.bin"), 32)
    loader = torch.utils.data.DataLoader(blocks, batch_size=16)

    def score(state):
        m = GPT(model.config)
        m.load_state_dict(state)
        return evaluate(m, loader, split_bytes=data["val_bytes"], split_tokens=data["val_tokens"]).loss

    assert score(snapshots[10]) == pytest.approx(result.loss, rel=1e-6)
    assert score(snapshots[9]) != pytest.approx(result.loss, rel=1e-6)


def test_resume_is_bitwise_equal_to_an_uninterrupted_run(tmp_path, corpus):
    run(tmp_path / "a", corpus, **{"optim.max_steps": 20})

    def stop_at_10(model, step):
        if step == 10:
            os.kill(os.getpid(), signal.SIGTERM)

    summary, _ = run(tmp_path / "b", corpus, TrainHooks(after_step=stop_at_10),
                     **{"optim.max_steps": 20})
    assert summary["stopped_by"] == "SIGTERM" and summary["step"] == 10
    AcceleratorState._reset_state(reset_partial_state=True)
    summary, _ = run(tmp_path / "b", corpus, **{"optim.max_steps": 20, "checkpoint.resume": "auto"})
    assert summary["step"] == 20
    assert_bitwise_equal(tmp_path / "a" / "run", tmp_path / "b" / "run", 20)


def assert_bitwise_equal(run_a, run_b, step):
    """Every tensor identical bit for bit (file bytes differ: safetensors orders its metadata
    map arbitrarily)."""
    a, _ = ckpt.read_weights(run_a / "checkpoints" / f"step-{step}" / ckpt.MODEL_FILE)
    b, _ = ckpt.read_weights(run_b / "checkpoints" / f"step-{step}" / ckpt.MODEL_FILE)
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype
        assert torch.equal(a[name].view(torch.uint8), b[name].view(torch.uint8)), name


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, corpus):
    def poison(model, step):
        if step == 12:
            with torch.no_grad():
                model.norm.weight.fill_(float("nan"))

    with pytest.raises(TrainingDiverged, match=r"loss is nan \(gradient norm nan\) at step 12.*step-10"):
        run(tmp_path, corpus, TrainHooks(after_step=poison), **{"optim.max_steps": 20})
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == ["step-10"]  # nothing after the bad step, no temp dirs left behind


def test_distillation_with_alpha_0_equals_plain_training(tmp_path, corpus):
    """The teacher is wired in (frozen, same data), and alpha=0 leaves only cross-entropy."""
    run(tmp_path / "teacher", corpus, **{"optim.max_steps": 10})
    AcceleratorState._reset_state(reset_partial_state=True)
    teacher = tmp_path / "teacher" / "run" / "checkpoints" / "step-10"
    run(tmp_path / "plain", corpus, **{"optim.max_steps": 10})
    AcceleratorState._reset_state(reset_partial_state=True)
    run(tmp_path / "zero", corpus, **{"optim.max_steps": 10, "distill.teacher": teacher,
                                      "distill.alpha": 0.0})
    AcceleratorState._reset_state(reset_partial_state=True)
    run(tmp_path / "half", corpus, **{"optim.max_steps": 10, "distill.teacher": teacher,
                                      "distill.alpha": 0.5})

    def losses(name):
        path = tmp_path / name / "run" / "metrics.jsonl"
        return [json.loads(x) for x in path.read_text().splitlines() if '"train"' in x]

    plain, zero, half = losses("plain"), losses("zero"), losses("half")
    assert [r["loss"] for r in zero] == [r["loss"] for r in plain]
    assert "distill_kl" in half[0] and half[0]["loss"] != plain[0]["loss"]


def test_init_from_a_student_checkpoint(tmp_path, corpus):
    from tinylm.student import make_student

    run(tmp_path / "teacher", corpus, **{"optim.max_steps": 5, "model.n_layer": 4})
    AcceleratorState._reset_state(reset_partial_state=True)
    teacher_dir = tmp_path / "teacher" / "run" / "checkpoints" / "step-5"
    teacher, cfg = ckpt.load_model(teacher_dir)
    student, report = make_student(teacher, "every:2")
    out = tmp_path / "student"
    out.mkdir()
    ckpt.write_checkpoint(out, student, cfg["train"], teacher_dir / ckpt.TOKENIZER_FILE)
    captured = {}

    def first_step(model, step):
        captured.setdefault("n_layer", len(model.layers))

    summary, _ = run(tmp_path / "s", corpus, TrainHooks(after_step=first_step),
                     **{"optim.max_steps": 5, "model.n_layer": 4, "checkpoint.init_from": out})
    assert captured["n_layer"] == 2  # the student's shape wins over model.n_layer
    assert summary["step"] == 5
