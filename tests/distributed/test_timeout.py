"""Hung and dying ranks (tinylm/distributed/timeout.py): real 2-process gloo launches of the
real trainer, one rank made to hang or to go non-finite alone; and the pieces on their own."""

from __future__ import annotations

import time

import pytest

from helpers import failure_excerpt, launch, write_corpus
from tinylm.distributed.parallel import ParallelConfig
from tinylm.distributed.timeout import is_collective_timeout

LAUNCHER_GRACE_S = 30  # torch elastic's SIGTERM-to-SIGKILL wait for a rank that won't stop


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus") / "corpus.txt")


def checkpoint_names(run_dir) -> list[str]:
    ckpts = run_dir / "checkpoints"
    return sorted(p.name for p in ckpts.iterdir()) if ckpts.exists() else []


@pytest.mark.slow
def test_a_hung_rank_is_named_and_the_run_stops_within_the_timeout(tmp_path, corpus):
    """Rank 1 stops answering mid-step 3 (it sleeps for 10 minutes after its backward); rank 0
    waits in the next collective for parallel.timeout_s, names rank 1, saves nothing; the
    launcher then stops rank 1. All of it within the timeout plus slack, not gloo's 30 min."""
    timeout_s = 4
    t0 = time.monotonic()
    proc, out, res = launch(tmp_path, corpus, "--fault-rank", "1", "--fault-step", "3",
                            "--fault-kind", "hang", **{
                                "optim.max_steps": 20, "checkpoint.interval": 0,
                                "parallel.timeout_s": timeout_s, "eval.interval": 0})
    elapsed = time.monotonic() - t0
    assert proc.returncode != 0, failure_excerpt(out)
    assert elapsed < timeout_s + 10 + LAUNCHER_GRACE_S + 60, elapsed  # 60: two ranks' start-up
    rank0 = [r for r in res if r["rank"] == 0]
    assert rank0 and rank0[0]["error"] == "RankTimeout", failure_excerpt(out)
    assert rank0[0]["message"].startswith(
        "rank 1 of 2 stopped answering: a collective waited parallel.timeout_s=4 s at step 3 "
        "(seen by rank 0); stopped without saving"), rank0[0]["message"]
    assert checkpoint_names(tmp_path / "run") == []  # no partial checkpoint, no temp dir


@pytest.mark.slow
def test_nan_on_one_rank_only_stops_every_rank_before_the_update(tmp_path, corpus):
    """Rank 1's weights turn NaN just before step 6, on that rank alone: its loss is NaN, rank
    0's is finite; both stop at step 6 before AdamW runs, and only step 5's checkpoint exists."""
    proc, out, res = launch(tmp_path, corpus, "--fault-rank", "1", "--fault-step", "6",
                            "--fault-kind", "nan", **{"optim.max_steps": 20,
                                                      "checkpoint.interval": 5})
    assert proc.returncode != 0 and len(res) == 2, failure_excerpt(out)
    by_rank = {r["rank"]: r for r in res}
    assert all(r["error"] == "TrainingDiverged" for r in res), res
    assert "at step 6 on this process" in by_rank[0]["message"]
    assert by_rank[1]["message"].startswith("loss is nan")
    assert not by_rank[0]["message"].startswith("loss is nan")  # rank 0's own loss was finite
    assert "stopped without updating" in by_rank[0]["message"]
    assert checkpoint_names(tmp_path / "run") == ["step-5"]


def test_timeout_is_told_apart_from_a_dead_peer():
    assert is_collective_timeout(RuntimeError(
        "[gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 4000ms for recv operation"))
    assert not is_collective_timeout(RuntimeError(
        "[gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:42171"))
    assert not is_collective_timeout(ValueError("timed out"))


def test_timeout_must_be_positive():
    with pytest.raises(ValueError, match=r"parallel.timeout_s=0: expected seconds > 0"):
        ParallelConfig(timeout_s=0)
