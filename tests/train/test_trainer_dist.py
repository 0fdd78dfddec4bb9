"""The training loop in real multi-process runs: 2 gloo ranks on CPU, and 2 "nodes" on localhost.

Every test asserts the world size it got: accelerate silently starts one process for several
launch forms on CPU.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch

from helpers import (REPO, env, failure_excerpt, finished, free_port, launch, tiny_overrides,
                     world_size, write_corpus)
from tinylm.checkpoint import format as ckpt

pytestmark = pytest.mark.slow
TRAIN = REPO / "scripts" / "train.py"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus") / "corpus.txt")


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_two_processes_train_and_pass_the_sync_check(tmp_path, corpus, optimizer):
    proc, out, res = launch(tmp_path, corpus, **{"optim.max_steps": 30, "optim.name": optimizer})
    assert finished(proc, out, res), failure_excerpt(out)
    assert [r["ok"] for r in res] == [True, True] and res[0]["num_processes"] == 2
    checks = re.findall(r"sync check @ step (\d+): 1 tie group\(s\), param\+grad identical on 2", out)
    assert checks == ["0", "10", "20"]
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    assert losses[-1] < losses[0] - 0.3
    # the LR follows optimizer steps, not per-process scheduler steps (the prepared-scheduler trap)
    from tinylm.train.config import load_config
    from tinylm.train.optim import lr_at
    o = load_config("configs/tiny.yaml", ["optim.max_steps=30"]).optim
    for r in records:
        if r["kind"] == "train":
            assert r["lr"] == pytest.approx(lr_at(r["step"] - 1, o))
    model, _ = ckpt.load_model(tmp_path / "run" / "checkpoints" / "step-30")
    assert model.lm_head.weight is model.embed_tokens.weight


def test_sync_check_fires_when_one_rank_tied_grad_differs(tmp_path, corpus):
    proc, out, res = launch(tmp_path, corpus, "--fault-rank", "1", "--fault-step", "10",
                            **{"optim.max_steps": 30, "checkpoint.interval": 5})
    assert proc.returncode != 0
    assert len(res) == 2 and all(not r["ok"] and r["error"] == "TiedSyncError" for r in res), \
        failure_excerpt(out)
    assert "embed_tokens.weight=module.lm_head.weight grad differs on rank(s) [1]" in res[0]["message"]
    assert "param differs" not in res[0]["message"]  # parameters still agree: caught in time
    # stopped before the optimizer step: no checkpoint of the corrupt state
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == ["step-10", "step-5"]


def test_two_process_resume_equals_uninterrupted(tmp_path, corpus):
    a, out_a, res_a = launch(tmp_path / "a", corpus, **{"optim.max_steps": 20})
    assert finished(a, out_a, res_a), failure_excerpt(out_a)
    b1, out_b1, res = launch(tmp_path / "b", corpus, "--stop-step", "10", **{"optim.max_steps": 20})
    assert [r.get("stopped_by") for r in res] == ["SIGTERM", "SIGTERM"], out_b1[-2000:]
    # resuming a 2-process run with 1 process and another global batch is refused, one
    # line, nothing written (with the same global batch it resumes: test_parallel.py)
    one = subprocess.run([sys.executable, str(TRAIN), "configs/tiny.yaml", *tiny_overrides(
        tmp_path / "b", corpus, **{"optim.max_steps": 20, "checkpoint.resume": "auto"})],
        capture_output=True, text=True, env=env(tmp_path), cwd=REPO, timeout=300)
    assert one.returncode == 2 and one.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'b' / 'run' / 'checkpoints' / 'step-10'}: cannot resume with "
        "global batch=8: the checkpoint was trained with global batch=16 (2 process(es) x "
        "batch_size 8 x grad_accum 1); choose optim.batch_size and grad_accum so that 1 "
        "process(es) x batch_size x grad_accum = 16, or start a new run_dir with "
        "checkpoint.init_from to keep the weights only"]
    b2, out_b2, res = launch(tmp_path / "b", corpus, **{"optim.max_steps": 20, "checkpoint.resume": "auto"})
    assert finished(b2, out_b2, res) and "resumed from" in out_b2 and res[0]["step"] == 20, \
        failure_excerpt(out_b2)
    wa, _ = ckpt.read_weights(tmp_path / "a" / "run" / "checkpoints" / "step-20" / ckpt.MODEL_FILE)
    wb, _ = ckpt.read_weights(tmp_path / "b" / "run" / "checkpoints" / "step-20" / ckpt.MODEL_FILE)
    for name in wa:  # gloo's all-reduce is deterministic: bitwise equal
        assert torch.equal(wa[name], wb[name]), name


def test_a_killed_rank_restarts_the_group_and_ends_bitwise(tmp_path, corpus):
    """accelerate launch --max_restarts 1 (torchrun's --max-restarts): rank 1 is SIGKILLed
    after step 12; the launcher restarts both ranks, which resume step 10's checkpoint
    (checkpoint.resume=auto) and end on the weights of a run never interrupted."""
    steps = {"optim.max_steps": 20, "checkpoint.interval": 5, "checkpoint.resume": "auto",
             "parallel.timeout_s": 30}  # a restarted group that can't connect fails in 30 s
    a, out_a, res_a = launch(tmp_path / "a", corpus, **steps)
    assert finished(a, out_a, res_a), failure_excerpt(out_a)
    b, out_b, res_b = launch(tmp_path / "b", corpus, "--fault-rank", "1", "--fault-step", "12",
                             "--fault-kind", "kill", launcher=("--max_restarts", "1"), **steps)
    assert b.returncode == 0, failure_excerpt(out_b)  # the restarted group finished
    # the first attempt failed (the launcher may see rank 0's connection error before rank 1's
    # SIGKILL) and a second one started
    assert "failed (exitcode: " in out_b and out_b.count("tinylm: 2 process(es)") == 2, out_b[-3000:]
    assert "resumed from" in out_b and "step-10 at step 10" in out_b, failure_excerpt(out_b)
    assert sorted(r["step"] for r in res_b if r["ok"]) == [20, 20]
    wa, _ = ckpt.read_weights(tmp_path / "a" / "run" / "checkpoints" / "step-20" / ckpt.MODEL_FILE)
    wb, _ = ckpt.read_weights(tmp_path / "b" / "run" / "checkpoints" / "step-20" / ckpt.MODEL_FILE)
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name


def test_two_nodes_on_localhost(tmp_path, corpus):
    """The multi-node path for real: two launches with --num_machines 2, machine ranks 0 and 1."""
    port = free_port()
    args = ["configs/tiny.yaml", *tiny_overrides(tmp_path, corpus, **{"optim.max_steps": 20})]
    procs = []
    for rank in (0, 1):
        e = env(tmp_path)
        e.update(RANK=str(rank), WORLD_SIZE="2")
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_machines", "2",
               "--machine_rank", str(rank), "--num_processes", "2", "--main_process_ip", "127.0.0.1",
               "--main_process_port", str(port), "--mixed_precision", "no", "--dynamo_backend", "no",
               str(TRAIN), *args]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True, env=e, cwd=REPO))
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    assert world_size(outs[0]) == 2
    assert re.findall(r"sync check @ step (\d+): .*identical on 2 process", outs[0]) == ["0", "10"]
    assert (tmp_path / "run" / "checkpoints" / "step-20" / ckpt.MODEL_FILE).is_file()


def test_distillation_with_two_processes(tmp_path, corpus):
    proc, out, res = launch(tmp_path / "teacher", corpus, **{"optim.max_steps": 10})
    assert finished(proc, out, res), failure_excerpt(out)
    teacher = tmp_path / "teacher" / "run" / "checkpoints" / "step-10"
    proc, out, res = launch(tmp_path / "student", corpus, **{
        "optim.max_steps": 10, "model.n_layer": 1, "distill.teacher": teacher})
    assert finished(proc, out, res), failure_excerpt(out)
    assert "distilling from" in out and "identical on 2 process" in out


def test_a_time_budget_stops_both_ranks_at_the_same_step(tmp_path, corpus):
    """optim.max_time with 2 ranks: one all-reduce per step decides on the slowest clock, so
    both stop together (otherwise one would wait forever in the other's collective), and the
    whole run, launch to final checkpoint, fits the budget."""
    budget = 25
    proc, out, res = launch(tmp_path, corpus, **{"optim.max_time": budget, "optim.max_steps": 100000,
                                                 "eval.interval": 0, "checkpoint.interval": 0})
    assert finished(proc, out, res), failure_excerpt(out)
    assert res[0]["step"] == res[1]["step"] > 5
    assert "time budget:" in out
    assert all(r["budget_used_s"] <= budget + 1.5 for r in res), res  # launch_time: ~1 s grain
