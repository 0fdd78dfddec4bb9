"""Checkpoint manifests: a flipped bit or a cut-short file in any file of a checkpoint is
found and named; resume=auto falls back to the newest checkpoint that verifies."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from accelerate.state import AcceleratorState

from helpers import quiet_env, tiny_overrides
from tinylm.checkpoint import format as ckpt
from tinylm.checkpoint.manifest import problems
from tinylm.train.config import load_config
from tinylm.train.trainer import train

FILES = ["model.safetensors", "config.json", "tokenizer.json", "trainer_state.json",
         "state/optimizer.safetensors", "state/rng_0.safetensors"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory, prose_corpus) -> Path:
    """A 10-step tiny run with checkpoints at steps 5 and 10."""
    tmp = tmp_path_factory.mktemp("saved")
    train(load_config("configs/tiny.yaml", tiny_overrides(tmp, prose_corpus, **{
        "optim.max_steps": 10, "checkpoint.interval": 5})))
    AcceleratorState._reset_state(reset_partial_state=True)
    return tmp / "run"


def copy_of(saved: Path, tmp: Path) -> Path:
    shutil.copytree(saved, tmp / "run")
    return tmp / "run"


def flip(path: Path, at: int = -10) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", FILES)
def test_a_flipped_bit_or_a_truncation_in_any_file_is_named(tmp_path, saved, name):
    run = copy_of(saved, tmp_path)
    step = run / "checkpoints" / "step-10"
    assert problems(step) == []
    flip(step / name)
    assert problems(step) == [f"{step / name}: its digest does not match the manifest (corrupt)"]
    with pytest.raises(ckpt.CheckpointError, match=f"{name}: its digest does not match"):
        ckpt.load_model(step)
    (step / name).write_bytes((step / name).read_bytes()[:-7])
    assert problems(step)[0].endswith("the manifest says " f"{(saved / 'checkpoints/step-10' / name).stat().st_size} "
                                      "(truncated or replaced)")


def test_resume_auto_falls_back_to_the_newest_checkpoint_that_verifies(tmp_path, saved, prose_corpus):
    run = copy_of(saved, tmp_path)
    flip(run / "checkpoints" / "step-10" / "state" / "optimizer.safetensors")
    cfg = load_config("configs/tiny.yaml", tiny_overrides(tmp_path, prose_corpus, **{
        "optim.max_steps": 12, "checkpoint.resume": "auto", "checkpoint.interval": 5}))
    try:
        with pytest.warns(UserWarning, match=r"checkpoint.resume=auto: .*step-10/state/optimizer"
                                             r".safetensors: its digest does not match the manifest "
                                             r"\(corrupt\): skipping step-10"):
            summary = train(cfg)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert summary["step"] == 12
    assert [p.name for _, p in ckpt.step_dirs(run / "checkpoints")] == ["step-10", "step-12"]
    flip(run / "checkpoints" / "step-12" / "model.safetensors")  # every checkpoint damaged:
    flip(run / "checkpoints" / "step-10" / "model.safetensors")  # no silent fresh start over them
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint under .* verifies"):
        ckpt.resolve_resume("auto", run / "checkpoints")


def test_the_verify_command(tmp_path, saved):
    run = copy_of(saved, tmp_path)
    verify = lambda *a: subprocess.run([sys.executable, "-m", "tinylm.cli", "verify", *map(str, a)],
                                       capture_output=True, text=True, timeout=120, cwd=tmp_path,
                                       env=quiet_env(tmp_path))
    proc = verify(run)
    assert proc.returncode == 0 and proc.stdout.splitlines() == [
        f"ok          {run / 'checkpoints' / 'step-5'}", f"ok          {run / 'checkpoints' / 'step-10'}"]
    flip(run / "checkpoints" / "step-10" / "tokenizer.json")
    (run / "checkpoints" / "step-5" / "manifest.json").unlink()
    proc = verify(run)
    assert proc.returncode == 1 and proc.stdout.splitlines() == [
        f"unverified  {run / 'checkpoints' / 'step-5'}: no manifest (a checkpoint of tinylm 0.1)",
        f"FAILED      {run / 'checkpoints' / 'step-10'}: {run / 'checkpoints' / 'step-10' / 'tokenizer.json'}: "
        "its digest does not match the manifest (corrupt)"]
    with pytest.warns(UserWarning, match="no manifest.json .a checkpoint of tinylm 0.1.: its files are not verified"):
        ckpt.load_model(run / "checkpoints" / "step-5")
    proc = verify(tmp_path / "nothing")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
