"""The trainer's checkpointer: a kill at any point of a save or a prune leaves either the old
or the new checkpoint, never a half one; what damage from outside leaves is skipped or
refused with a message. (Resume across strategies and process counts: test_parallel.py.)"""

import shutil
import subprocess
import sys

import pytest
import torch

from helpers import (REPO, accelerate_2proc, env, small_tmpfs, tiny_overrides, world_size,
                     write_corpus)

from tinylm.checkpoint.checkpointer import Checkpointer
from tinylm.checkpoint.manifest import problems
from tinylm.checkpoint.format import (MODEL_FILE, CheckpointError, find_checkpoints, load_model,
                                      step_dirs)
from tinylm.model.config import GPTConfig
from tinylm.model.gpt import GPT


class _OneProcess:
    """What Checkpointer needs of an Accelerator, for one process (no process group)."""

    is_main_process, num_processes, process_index, scaler = True, 1, 0, None

    def __init__(self):
        from accelerate import PartialState
        PartialState()  # accelerate's RNG saver logs through its state

    def wait_for_everyone(self): pass


def trained():
    """(model, [optimizer]) as the trainer hands them to Checkpointer.save."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=16))
    return model, [torch.optim.AdamW(model.parameters())]


def saved_run(tmp_path, steps=(1, 2), keep_last=2, **kw):
    tok = tmp_path / "tokenizer.json"
    tok.write_text("{}")
    saver = Checkpointer(tmp_path / "run", _OneProcess(), interval=1, keep_last=keep_last, **kw)
    for step in steps:
        saver.save(step, *trained(), {}, tok, {"step": step, "data": {}}, {})
    return saver


def test_a_kill_while_re_saving_a_step_never_loses_it(tmp_path, monkeypatch):
    """Re-saving step-2 renames the old one away, then the new one in: killed in between,
    the next start puts the old one back (before: step-2 was deleted first)."""
    saver = saved_run(tmp_path)
    from tinylm.common import atomic
    real = atomic.os.replace

    def replace(a, b):
        if str(b).endswith("/step-2"):  # the new copy's rename: "killed" just before it
            raise KeyboardInterrupt
        return real(a, b)

    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        saver.save(2, *trained(), {}, tmp_path / "tokenizer.json", {"step": 2, "data": {}}, {})
    monkeypatch.setattr(atomic.os, "replace", real)
    assert not (saver.root / "step-2").exists() and (saver.root / ".step-2.old").exists()
    again = Checkpointer(tmp_path / "run", _OneProcess(), interval=1, keep_last=2)
    assert [p.name for p in sorted(again.root.iterdir())] == ["step-1", "step-2"]
    load_model(again.root / "step-2")


def test_a_kill_while_pruning_leaves_no_half_checkpoint(tmp_path, monkeypatch):
    saver = saved_run(tmp_path, keep_last=1, steps=(1,))
    import shutil
    real = shutil.rmtree

    def rmtree(path, *args, **kwargs):
        if str(path).endswith(".deleting"):  # "killed" as the old checkpoint's deletion starts
            raise KeyboardInterrupt
        return real(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", rmtree)
    with pytest.raises(KeyboardInterrupt):
        saver.save(2, *trained(), {}, tmp_path / "tokenizer.json", {"step": 2, "data": {}}, {})
    # step-1 was renamed away before its deletion began: what is left is not a checkpoint
    assert step_dirs(saver.root) == [(2, saver.root / "step-2")]


def test_an_incomplete_step_dir_is_skipped_or_refused_with_a_message(tmp_path):
    saver = saved_run(tmp_path)
    (saver.root / "step-2" / MODEL_FILE).unlink()  # damage from outside tinylm
    with pytest.warns(UserWarning, match=r"step-2: incomplete checkpoint \(no model.safetensors\)"):
        assert find_checkpoints(tmp_path / "run") == [saver.root / "step-1"]
    with pytest.raises(CheckpointError, match="step-2: incomplete checkpoint"):
        find_checkpoints(saver.root / "step-2")


@pytest.fixture
def small_disk(tmp_path):
    """A real 3 MiB filesystem (helpers.small_tmpfs), or a skip."""
    with small_tmpfs(tmp_path / "disk", "3m") as disk:
        yield disk


@pytest.mark.parametrize("processes", [1, 2])
def test_a_real_full_disk_while_saving_is_one_line_and_the_rerun_goes_on(tmp_path, small_disk, processes):
    """Checkpoints of ~0.66 MB every 2 steps, none pruned, into 3 MiB: a save fails with
    safetensors' own "No space left on device". One line, exit 2, on every process (no
    "Connection closed by peer" from the other rank); no temp dir left; the checkpoints
    before it verify, and a rerun with pruning resumes from the newest."""
    corpus = write_corpus(tmp_path / "corpus.txt")
    args = tiny_overrides(tmp_path, corpus, **{"run_dir": small_disk / "run", "optim.max_steps": 20,
                                               "checkpoint.interval": 2, "checkpoint.keep_last": 0,
                                               "log.interval": 100, "eval.interval": 0})
    if processes == 1:
        proc = subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"), "configs/tiny.yaml",
                               *args], capture_output=True, text=True, env=env(tmp_path), cwd=REPO,
                              timeout=300)
    else:
        proc = accelerate_2proc(REPO / "scripts" / "train.py", ["configs/tiny.yaml", *args], tmp_path)
        assert world_size(proc.stdout + proc.stderr) == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors and set(errors) == {errors[0]} and "not saved (" in errors[0], proc.stderr[-3000:]
    assert "No space left on device" in errors[0] and "earlier checkpoints are intact" in errors[0]
    assert "Connection closed by peer" not in proc.stderr
    if processes == 1:  # (two processes: the launcher adds its own report of the exit status)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
    root = small_disk / "run" / "checkpoints"
    assert not list(root.glob(".*")), list(root.iterdir())  # no temp dir left behind
    saved = step_dirs(root)
    assert saved and all(problems(p) == [] for _, p in saved)
    for _, old in saved[:-1]:  # the user frees space; the rerun continues from the newest
        shutil.rmtree(old)
    again = subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"), "configs/tiny.yaml",
                            *args, "checkpoint.keep_last=1", "checkpoint.resume=auto",
                            f"optim.batch_size={8 * processes}",  # one process: the same global batch
                            "optim.max_steps=" + str(saved[-1][0] + 2)],
                           capture_output=True, text=True, env=env(tmp_path), cwd=REPO, timeout=300)
    assert again.returncode == 0 and f"resumed from {saved[-1][1]}" in again.stdout, again.stderr[-3000:]


def test_retention_keeps_every_kth_step_and_saves_by_wall_time(tmp_path):
    saver = saved_run(tmp_path, steps=range(1, 11), keep_last=2, keep_every=4)
    assert [s for s, _ in step_dirs(saver.root)] == [4, 8, 9, 10]
    timed = Checkpointer(tmp_path / "t", _OneProcess(), interval=0, keep_last=2, interval_s=60)
    timed.saved_at_s = 100.0  # the run clock at the last save
    assert not timed.due(5, 100, now_s=159.0) and timed.due(5, 100, now_s=160.0)
    assert not timed.due(100, 100, now_s=1e9)  # the final save is the trainer's
    stepped = Checkpointer(tmp_path / "s", _OneProcess(), interval=10, keep_last=2, interval_s=60)
    assert stepped.due(10, 100, now_s=0.0) and not stepped.due(11, 100, now_s=59.0)
