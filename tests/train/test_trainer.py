"""The training loop, in process, one process: loss, files, eval identity, resume, stopping."""

from __future__ import annotations

import copy
import json
import math
import os
import re
import signal

import pytest
import torch
from accelerate.state import AcceleratorState
from safetensors import safe_open

from helpers import tiny_overrides
from tinylm.checkpoint import format as ckpt
from tinylm.data.batches import EvalBlocks
from tinylm.data.prepare import open_prepared
from tinylm.distributed.parallel import unwrap
from tinylm.eval.loss import evaluate
from tinylm.model.gpt import GPT
from tinylm.train.config import load_config
from tinylm.train.state import TrainHooks
from tinylm.train.step import TrainingDiverged
from tinylm.train.trainer import train


pytestmark = pytest.mark.usefixtures("in_process_training")  # conftest


@pytest.fixture(scope="module")
def corpus(prose_corpus):
    return prose_corpus


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
    blocks = EvalBlocks(open_prepared(data["data_dir"]).split("val"), 32)
    loader = torch.utils.data.DataLoader(blocks, batch_size=16)

    def score(state):
        m = GPT(model.config)
        m.load_state_dict(state)
        return evaluate(m, loader, split_bytes=data["val_bytes"], split_tokens=data["val_tokens"]).loss

    assert score(snapshots[10]) == pytest.approx(result.loss, rel=1e-6)
    assert score(snapshots[9]) != pytest.approx(result.loss, rel=1e-6)


@pytest.mark.parametrize("optimizer, shards", [("adamw", 1), ("muon", 1), ("adamw", 9)])
def test_resume_is_bitwise_equal_to_an_uninterrupted_run(tmp_path, corpus, optimizer, shards):
    """Also on a store of 9+ shards (data.shard_bytes): batches cross shard boundaries."""
    sharded = {"data.shard_bytes": 150_000 // shards + 1} if shards > 1 else {}
    run(tmp_path / "a", corpus, **{"optim.max_steps": 20, "optim.name": optimizer, **sharded})
    if shards > 1:
        (store,) = (tmp_path / "a" / "data").glob("*/manifest.json")
        assert len(json.loads(store.read_text())["shards"]) >= shards

    def stop_at_10(model, step):
        if step == 10:
            os.kill(os.getpid(), signal.SIGTERM)

    summary, _ = run(tmp_path / "b", corpus, TrainHooks(after_step=stop_at_10),
                     **{"optim.max_steps": 20, "optim.name": optimizer, **sharded})
    assert summary["stopped_by"] == "SIGTERM" and summary["step"] == 10
    AcceleratorState._reset_state(reset_partial_state=True)
    summary, _ = run(tmp_path / "b", corpus, **{"optim.max_steps": 20, "checkpoint.resume": "auto",
                                                "optim.name": optimizer, **sharded})
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
    from tinylm.convert.student import make_student

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


# -- reliability: nothing poisoned, nothing half-written, no silent resume -------------------

def test_a_nan_gradient_stops_before_the_update_and_names_a_good_checkpoint(tmp_path, corpus):
    """The case that once saved an all-NaN step-3 and called it "last good": lr 1e6, a
    checkpoint every step. The loss can still be finite when the gradient norm is not."""
    with pytest.raises(TrainingDiverged) as e:
        run(tmp_path, corpus, **{"optim.lr": 1e6, "checkpoint.interval": 1,
                                 "checkpoint.keep_last": 0, "optim.max_steps": 30})
    named = re.search(r"Last good checkpoint: (\S+)$", str(e.value)).group(1)
    saved = sorted((tmp_path / "run" / "checkpoints").iterdir())
    assert saved and named == str(saved[-1])  # the newest written, and it is good:
    for step_dir in saved:
        model, _ = ckpt.load_model(step_dir)
        assert all(torch.isfinite(p).all() for p in model.parameters()), step_dir.name
    assert not list((tmp_path / "run" / "checkpoints").glob(".*"))  # no temp dirs left


def test_non_finite_weights_are_never_saved(tmp_path, corpus):
    def poison(model, step):  # finite loss and gradients are not enough: look at the weights
        if step == 10:
            with torch.no_grad():
                model.layers[0].mlp.down_proj.weight[0, 0] = float("inf")

    with pytest.raises(TrainingDiverged, match=r"weights are not finite at step 10 .*step-5$"):
        run(tmp_path, corpus, TrainHooks(after_step=poison),
            **{"optim.max_steps": 20, "checkpoint.interval": 5})
    assert [p.name for p in sorted((tmp_path / "run" / "checkpoints").iterdir())] == ["step-5"]


@pytest.mark.parametrize("overrides, refused", [
    ({"optim.batch_size": 4}, r"global batch=4: the checkpoint was trained with global batch=8 "
                              r"\(1 process\(es\) x batch_size 8 x grad_accum 1\)"),
    ({"optim.grad_accum": 2}, r"global batch=16: the checkpoint was trained with global batch=8"),
    ({"data.source": "python-docs"}, r"data.source=python-docs: the checkpoint was trained with "
                                     r"data.source=")])
def test_a_resume_that_is_not_the_same_run_is_refused(tmp_path, corpus, overrides, refused):
    """Another global batch or corpus is another run; the same global batch split otherwise
    (batch 4 x accumulation 2 for 8 x 1) is the same data per step, and resumes."""
    run(tmp_path, corpus, **{"optim.max_steps": 5})
    AcceleratorState._reset_state(reset_partial_state=True)
    step5 = tmp_path / "run" / "checkpoints" / "step-5"
    with pytest.raises(ckpt.CheckpointError, match=f"cannot resume with {refused}"):
        run(tmp_path, corpus, **{"optim.max_steps": 10, "checkpoint.resume": step5, **overrides})
    AcceleratorState._reset_state(reset_partial_state=True)
    run(tmp_path, corpus, **{"optim.max_steps": 10, "checkpoint.resume": step5,
                             "optim.batch_size": 4, "optim.grad_accum": 2})


def test_a_missing_rng_file_is_refused(tmp_path, corpus):
    run(tmp_path, corpus, **{"optim.max_steps": 5})
    AcceleratorState._reset_state(reset_partial_state=True)
    step5 = tmp_path / "run" / "checkpoints" / "step-5"
    (step5 / ckpt.STATE_DIR / "rng_0.safetensors").write_bytes(b"not a safetensors file")
    (step5 / "manifest.json").unlink()  # the RNG check itself (the manifest's: test_manifest.py)
    with pytest.raises(ckpt.CheckpointError, match="rng_0.safetensors: unreadable RNG state"):
        run(tmp_path, corpus, **{"optim.max_steps": 10, "checkpoint.resume": "auto"})


def test_a_full_disk_while_saving_is_one_error_and_loses_nothing(tmp_path, corpus, monkeypatch):
    real = ckpt.save_file

    def save_file(tensors, path, metadata=None):
        if ".step-10.tmp" in str(path):
            raise OSError(28, "No space left on device")
        return real(tensors, path, metadata=metadata)

    monkeypatch.setattr(ckpt, "save_file", save_file)
    with pytest.raises(ckpt.CheckpointError, match=r"step-10: not saved \(No space left on device\)"):
        run(tmp_path, corpus, **{"optim.max_steps": 20, "checkpoint.interval": 5})
    root = tmp_path / "run" / "checkpoints"
    assert [p.name for p in sorted(root.iterdir())] == ["step-5"]  # temp removed, step-5 whole
    ckpt.load_model(root / "step-5")


def test_metrics_after_a_resume_have_one_record_per_step(tmp_path, corpus):
    run(tmp_path, corpus, **{"optim.max_steps": 20, "checkpoint.interval": 10,
                             "checkpoint.keep_last": 0})
    AcceleratorState._reset_state(reset_partial_state=True)
    step10 = tmp_path / "run" / "checkpoints" / "step-10"  # as if killed after step 20's logs
    run(tmp_path, corpus, **{"optim.max_steps": 20, "checkpoint.resume": step10})
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    keys = [(r["kind"], r["step"]) for r in records]
    assert len(keys) == len(set(keys)) and ("train", 20) in keys


def test_every_checkpoint_file_gets_the_same_mode(tmp_path, corpus):
    run(tmp_path, corpus, **{"optim.max_steps": 5})
    step5 = tmp_path / "run" / "checkpoints" / "step-5"
    modes = {f.name: f.stat().st_mode & 0o777 for f in step5.iterdir() if f.is_file()}
    assert len(set(modes.values())) == 1, modes  # model.safetensors was once 0600


def test_a_second_run_into_a_locked_run_dir_is_refused(tmp_path, corpus):
    from tinylm.train.rundir import RunDirError, RunDirLock

    (tmp_path / "run").mkdir()
    holder = RunDirLock(tmp_path / "run")
    try:
        with pytest.raises(RunDirError, match=rf"run_dir={tmp_path / 'run'}: in use by another "
                                              rf"run \(process {os.getpid()}\)"):
            run(tmp_path, corpus, **{"optim.max_steps": 5})
        assert not (tmp_path / "run" / "config.yaml").exists()  # nothing written
    finally:
        holder.release()
    run(tmp_path, corpus, **{"optim.max_steps": 5})  # free again


def test_an_unwritable_run_dir_is_one_error_before_any_work(tmp_path, corpus):
    from tinylm.train.rundir import RunDirError

    blocker = tmp_path / "file"
    blocker.write_text("a file where the run dir should go")
    with pytest.raises(RunDirError, match=rf"run_dir={blocker / 'run'}: not a writable directory"):
        run(tmp_path, corpus, **{"run_dir": blocker / "run", "optim.max_steps": 5})
    assert not (tmp_path / "data").exists()  # refused before preparing data


def test_a_model_far_too_big_for_its_corpus_is_warned_about(tmp_path, corpus, capsys):
    """gpt2-small on the 2 MB built-in corpus would memorize it: one warning line, with the
    tokens-per-parameter ratio. Also: no MFU or TFLOP/s on a CPU (no meaningful peak)."""
    run(tmp_path, corpus, **{"optim.max_steps": 2, "model.n_embd": 256, "model.n_head": 4,
                             "model.n_layer": 4, "log.interval": 1})
    out = capsys.readouterr().out
    warning = [line for line in out.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "unique training tokens per parameter (Chinchilla-optimal is ~20)" in warning[0]
    assert "MFU" not in out and "TFLOP/s" not in out


def test_qat_turns_on_at_its_fraction_of_the_run_and_trains_through_it(tmp_path, corpus, capsys):
    """optim.qat_from=0.5 of 20 steps: the blocks compute with int6 round trips from step 10
    on (one log line), the loss stays finite and still falls, and the checkpoint holds the
    float weights (the flag is the run's, not the model file's)."""
    hooks = TrainHooks(after_step=lambda model, step: seen.append(
        (step, unwrap(model).layers[0].fake_quant_bits)))
    seen: list = []
    summary, _ = run(tmp_path, corpus, hooks, **{"optim.max_steps": 20, "optim.qat_from": 0.5,
                                                 "log.interval": 1})
    assert "QAT from step 10 (50% of the run): the blocks compute with int6 round trips" in \
        capsys.readouterr().out
    assert [bits for _, bits in seen] == [None] * 10 + [6] * 10
    losses = [json.loads(x)["loss"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
              if json.loads(x)["kind"] == "train"]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[10]
    model, _ = ckpt.load_model(tmp_path / "run" / "checkpoints" / "step-20")
    assert model.layers[0].fake_quant_bits is None
