"""FSDP2 beside DDP: real 2-process gloo launches of the real trainer (each asserting the world
size and the strategy it got), checkpoints across strategies and process counts, the
sharding-aware sync check and its fault injection; and the check's logic on its own."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import pytest
import torch

from helpers import REPO, env, failure_excerpt, finished, launch, tiny_overrides, write_corpus
from tinylm.checkpoint import format as ckpt
from tinylm.distributed.sync_check import _compare
from tinylm.train.config import ConfigError, load_config

TRAIN = REPO / "scripts" / "train.py"
STEPS = {"optim.max_steps": 20, "checkpoint.interval": 10, "log.interval": 1,
         "sync_check.interval": 10}


def strategy_line(out: str) -> str:
    m = re.search(r"^tinylm: \d+ process\(es\), (strategy [^,]*(?:\([^)]*\))?)", out, re.M)
    assert m, out[-2000:]
    return m.group(1)


def losses(run) -> list[float]:
    return [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()
            if json.loads(x)["kind"] == "train"]


def weights(run, step: int) -> dict[str, torch.Tensor]:
    return ckpt.read_weights(run / "checkpoints" / f"step-{step}" / ckpt.MODEL_FILE)[0]


def assert_close(a: dict, b: dict, rtol: float) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=rtol, atol=rtol * a[name].abs().max().item(),
                                   msg=name)


def ends_like(resumed, uninterrupted) -> None:
    """A run resumed at step 10 logs the uninterrupted run's last 10 losses and ends on its weights."""
    torch.testing.assert_close(torch.tensor(losses(resumed)),
                               torch.tensor(losses(uninterrupted)[10:]), rtol=1e-5, atol=0)
    assert_close(weights(resumed, 20), weights(uninterrupted, 20), rtol=1e-5)


def resume_in_one_process(tmp_path, corpus, run, **extra) -> subprocess.CompletedProcess:
    """Resume ``run``'s step-10 under fsdp2 with ONE process (plain python, no launcher)."""
    return subprocess.run(
        [sys.executable, str(TRAIN), "configs/tiny.yaml", *tiny_overrides(tmp_path, corpus, **STEPS, **{
            "parallel.strategy": "fsdp2", "checkpoint.resume": run / "checkpoints" / "step-10",
            **extra})],
        capture_output=True, text=True, env=env(tmp_path), cwd=REPO, timeout=300)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus") / "corpus.txt")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, corpus):
    """The same 20-step run (fp32, same seed) under DDP and under FSDP2, 2 processes each."""
    out = {}
    for strategy in ("ddp", "fsdp2"):
        tmp = tmp_path_factory.mktemp(strategy)
        proc, log, res = launch(tmp, corpus, **STEPS, **{"parallel.strategy": strategy})
        assert finished(proc, log, res), failure_excerpt(log)
        out[strategy] = (tmp / "run", log)
    return out


@pytest.mark.slow
def test_fsdp2_trains_like_ddp_tie_one_dtensor_in_one_group(runs):
    (ddp, ddp_log), (fsdp, fsdp_log) = runs["ddp"], runs["fsdp2"]
    assert strategy_line(ddp_log) == "strategy ddp (MULTI_CPU)"
    assert strategy_line(fsdp_log).startswith("strategy fsdp2 (tinylm's fully_shard on a cpu mesh")
    assert "parallel: fsdp2 (2 shard(s); groups: 2 blocks + root[embed_tokens=lm_head, norm])" in fsdp_log
    checks = re.findall(r"sync check @ step (\d+): 1 tie group\(s\), param\+grad shards tile the "
                        r"full tensor \(2 shards\) and agree across 1 replica\(s\) on 2", fsdp_log)
    assert checks == ["0", "10"]
    a, b = losses(ddp), losses(fsdp)
    assert len(a) == len(b) == 20
    torch.testing.assert_close(torch.tensor(b), torch.tensor(a), rtol=1e-5, atol=0)
    assert_close(weights(fsdp, 20), weights(ddp, 20), rtol=1e-5)
    # the same checkpoint files, readable by evaluate/generate/convert: the tie stored once
    model, _ = ckpt.load_model(fsdp / "checkpoints" / "step-20")
    assert model.lm_head.weight is model.embed_tokens.weight
    assert list(weights(fsdp, 20)).count("embed_tokens.weight") == 1 and "lm_head.weight" not in weights(fsdp, 20)


@pytest.mark.slow
@pytest.mark.parametrize("source, target", [("ddp", "fsdp2"), ("fsdp2", "ddp")])
def test_resume_across_strategies(tmp_path, corpus, runs, source, target):
    """Weights, optimizer state (one strategy-free file), step and data position carry over:
    the resumed run ends where the uninterrupted one did."""
    run, _ = runs[source]
    proc, log, res = launch(tmp_path, corpus, **STEPS, **{
        "parallel.strategy": target, "checkpoint.resume": run / "checkpoints" / "step-10"})
    assert finished(proc, log, res) and res[0]["step"] == 20, failure_excerpt(log)
    assert strategy_line(log).startswith(f"strategy {target}") and "resumed from" in log
    ends_like(tmp_path / "run", run)


@pytest.mark.slow
def test_fsdp2_resume_from_2_processes_to_1(tmp_path, corpus, runs):
    """N -> M: the same global batch (2 x 8 -> 1 x 16) gives the same data per step."""
    run, _ = runs["fsdp2"]
    proc = resume_in_one_process(tmp_path, corpus, run, **{"optim.batch_size": 16})
    assert proc.returncode == 0, failure_excerpt(proc.stdout + proc.stderr)
    assert "parallel: fsdp2 (1 shard(s)" in proc.stdout and "resuming a 2-process run with 1" in proc.stdout
    ends_like(tmp_path / "run", run)


@pytest.mark.slow
def test_another_global_batch_is_refused(tmp_path, corpus, runs):
    run, _ = runs["fsdp2"]
    proc = resume_in_one_process(tmp_path, corpus, run)  # batch 8: half the global batch
    assert proc.returncode == 2 and proc.stderr.count("error:") == 1
    assert proc.stderr.strip().splitlines()[-1:] == [
        f"error: {run / 'checkpoints' / 'step-10'}: cannot resume with global batch=8: the "
        "checkpoint was trained with global batch=16 (2 process(es) x batch_size 8 x grad_accum 1); "
        "choose optim.batch_size and grad_accum so that 1 process(es) x batch_size x grad_accum "
        "= 16, "
        "or start a new run_dir with checkpoint.init_from to keep the weights only"]


@pytest.mark.slow
def test_fsdp2_resume_is_bitwise(tmp_path, corpus, runs):
    """SIGTERM at step 10 (checkpoint), resume to 20: bit-for-bit the uninterrupted run."""
    run, _ = runs["fsdp2"]
    overrides = {**STEPS, "parallel.strategy": "fsdp2", "checkpoint.interval": 0}
    proc, log, res = launch(tmp_path, corpus, "--stop-step", "10", **overrides)
    assert [r.get("stopped_by") for r in res] == ["SIGTERM", "SIGTERM"], failure_excerpt(log)
    proc, log, res = launch(tmp_path, corpus, **overrides, **{"checkpoint.resume": "auto"})
    assert finished(proc, log, res) and res[0]["step"] == 20, failure_excerpt(log)
    mine, theirs = weights(tmp_path / "run", 20), weights(run, 20)
    for name in theirs:
        assert torch.equal(mine[name], theirs[name]), name


@pytest.mark.slow
def test_hsdp_replica_fault_is_caught_on_both_ranks(tmp_path, corpus):
    """2 replicas x 1 shard: rank 1 perturbs its tied-grad shard; both ranks stop before the
    update, naming rank 1."""
    proc, log, res = launch(tmp_path, corpus, "--fault-rank", "1", "--fault-step", "10", **{
        **STEPS, "parallel.strategy": "fsdp2", "parallel.dp_replicate": 2})
    assert "parallel: hsdp (2 replica(s) x 1 shard(s)" in log
    assert proc.returncode != 0 and len(res) == 2, failure_excerpt(log)
    assert all(not r["ok"] and r["error"] == "TiedSyncError" for r in res), res
    assert "embed_tokens.weight=lm_head.weight grad differs on rank(s) [1] vs rank 0" in res[0]["message"]
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-10"]


@pytest.mark.slow
def test_a_shard_without_gradient_is_caught(tmp_path, corpus):
    """Pure sharding: rank 1 loses its tied-grad shard (its rows would never be updated)."""
    proc, log, res = launch(tmp_path, corpus, "--fault-rank", "1", "--fault-step", "0",
                            "--fault-kind", "drop", **{**STEPS, "parallel.strategy": "fsdp2"})
    assert proc.returncode != 0 and len(res) == 2, failure_excerpt(log)
    assert all(r["error"] == "TiedSyncError" for r in res), res
    assert ("embed_tokens.weight=lm_head.weight grad: no gradient on rank(s) [1]: their rows "
            "would not be updated") in res[1]["message"]


@pytest.mark.slow
def test_accelerates_own_fsdp2_grouping_passes_the_check(tmp_path):
    """On several GPUs accelerate wraps the model: it puts [norm, embed_tokens, lm_head] in one
    group of their own (not the root). That is one group for the tie, so the check accepts it;
    run here through accelerate's own wrapping function, on 2 gloo ranks. A grouping that splits
    the tie (lm_head alone) is refused."""
    from helpers import accelerate_2proc

    proc = accelerate_2proc(REPO / "tests" / "dist" / "accelerate_fsdp2_grouping.py", [], tmp_path)
    res = [json.loads(m) for m in re.findall(r"RESULT (\{[^\n]*\})", proc.stdout)]
    assert len(res) == 2, failure_excerpt(proc.stdout + proc.stderr)
    for r in res:
        assert "error" not in r, r["error"]
        assert r["world"] == 2 and r["tied_is_one"] and r["dtensor"] == "DTensor"
        assert r["label"] == "one group [embed_tokens, norm, lm_head]"
        assert all(math.isfinite(loss) for loss in r["losses"])  # three real steps
        # and the other side: lm_head in a group of its own is a split tie, refused
        assert r["split_refused"].startswith("tie broken: lm_head.weight should be embed_tokens.weight")


# -- the check's logic, one row per rank: param digest, grad digest, param rows, grad rows,
#    shard, replica (-1: the rank is its own replica, DDP) ------------------------------------

def test_ddp_ranks_must_be_identical():
    assert _compare("w", [[1, 2, 8, 8, 0, -1], [1, 2, 8, 8, 0, -1]], 8) == []
    assert _compare("w", [[1, 2, 8, 8, 0, -1], [1, 3, 8, 8, 0, -1]], 8) == [
        "w grad differs on rank(s) [1] vs rank 0"]


def test_shards_must_tile_and_replicas_agree():
    fsdp = [[1, 2, 4, 4, 0, 0], [5, 6, 4, 4, 1, 0]]  # different bytes: different shards
    assert _compare("w", fsdp, 8) == []
    assert _compare("w", [[1, 2, 4, 4, 0, 0], [5, 6, 3, 3, 1, 0]], 8) == [
        "w param: shards hold {0: 4, 1: 3} rows on ranks, not the 8 rows of the full tensor",
        "w grad: shards hold {0: 4, 1: 3} rows on ranks, not the 8 rows of the full tensor"]
    hsdp = [[1, 2, 4, 4, 0, 0], [5, 6, 4, 4, 1, 0], [1, 2, 4, 4, 0, 1], [5, 7, 4, 4, 1, 1]]
    assert _compare("w", hsdp, 8) == ["w grad shard 1 differs on rank(s) [3] vs rank 1"]


def test_parallel_config_is_validated():
    with pytest.raises(ConfigError, match=r"parallel.strategy='zero3': expected one of ddp, fsdp2"):
        load_config("configs/tiny.yaml", ["parallel.strategy=zero3"])
    assert load_config("configs/tiny.yaml").parallel.strategy == "ddp"


@pytest.mark.slow
def test_a_block_shared_across_depth_is_one_group_and_fsdp2_equals_ddp(tmp_path, corpus):
    """4 depths over 2 unique blocks (cycle:2): FSDP2 shards each block once and all-gathers
    it for each of its uses; losses and final weights equal DDP's, every shared matrix is a
    tie group the sync check covers, and the checkpoint stores each block once."""
    looped = {**STEPS, "model.n_layer": 4, "model.layer_map": "cycle:2"}
    logs, runs = {}, {}
    for strategy in ("ddp", "fsdp2"):
        tmp = tmp_path / strategy
        tmp.mkdir()
        proc, logs[strategy], res = launch(tmp, corpus, **looped, **{"parallel.strategy": strategy})
        assert finished(proc, logs[strategy], res), failure_excerpt(logs[strategy])
        runs[strategy] = tmp / "run"
    assert "parallel: fsdp2 (2 shard(s); groups: 2 blocks (run at 4 depths) + root" in logs["fsdp2"]
    for log in logs.values():  # embed=head, and the 6 tensors of each of the 2 shared blocks
        assert re.findall(r"sync check @ step (\d+): 13 tie group\(s\)", log) == ["0", "10"]
    torch.testing.assert_close(torch.tensor(losses(runs["fsdp2"])), torch.tensor(losses(runs["ddp"])),
                               rtol=1e-5, atol=0)
    assert_close(weights(runs["fsdp2"], 20), weights(runs["ddp"], 20), rtol=1e-5)
    stored = weights(runs["fsdp2"], 20)
    assert {n.split(".")[1] for n in stored if n.startswith("layers.")} == {"0", "1"}
    model, _ = ckpt.load_model(runs["fsdp2"] / "checkpoints" / "step-20")
    assert model.layers[0] is model.layers[2] and model.layers[1] is model.layers[3]
