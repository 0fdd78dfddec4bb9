"""The trainer's checkpointer: a kill at any point of a save or a prune leaves either the old
or the new checkpoint, never a half one; what damage from outside leaves is skipped or
refused with a message. (Resume across strategies and process counts: test_parallel.py.)"""

import pytest
import torch

from tinylm.checkpoint.checkpointer import Checkpointer
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


def saved_run(tmp_path, steps=(1, 2), keep_last=2):
    tok = tmp_path / "tokenizer.json"
    tok.write_text("{}")
    saver = Checkpointer(tmp_path / "run", _OneProcess(), interval=1, keep_last=keep_last)
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
