"""The random state of each process, without pickle: it round-trips exactly, and no file of a
checkpoint is ever unpickled unless trusted, so a planted pickle never runs."""

from __future__ import annotations

import os
import pickle
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState

from helpers import tiny_overrides
from tinylm.checkpoint import format as ckpt
from tinylm.checkpoint.load import load_for_inference
from tinylm.checkpoint.rng import load_rng, read_rng, rng_file, save_rng
from tinylm.data.corpus import DataError
from tinylm.train.config import load_config
from tinylm.train.trainer import train


class _Process:
    process_index, scaler = 0, None


class Planted:
    """A pickle that, when loaded, creates ``marker``: proof that something unpickled it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mknod, (str(self.marker),))


def test_the_random_state_round_trips_exactly(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    save_rng(tmp_path, _Process())
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    load_rng(tmp_path, _Process(), trust_pickle=False)
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])
    tensors, meta = read_rng(rng_file(tmp_path, 0))
    assert set(tensors) >= {"torch", "numpy_keys"} and meta["format"] == "tinylm-rng-1"
    with open(rng_file(tmp_path, 0), "rb") as f:
        assert b"\x80\x04" not in f.read(16)  # safetensors, not a pickle protocol header


@pytest.fixture(scope="module")
def saved(tmp_path_factory, prose_corpus) -> Path:
    """A 5-step tiny run's checkpoint, made once."""
    tmp = tmp_path_factory.mktemp("saved")
    train(load_config("configs/tiny.yaml", tiny_overrides(tmp, prose_corpus, **{"optim.max_steps": 5})))
    AcceleratorState._reset_state(reset_partial_state=True)
    return tmp


SLOTS = {  # a file of a checkpoint -> the one line its planted pickle must give
    "model.safetensors": "corrupt or truncated safetensors file",
    "config.json": "config.json: not JSON: byte 0 is not UTF-8",
    "trainer_state.json": "trainer_state.json: not JSON: byte 0 is not UTF-8",
    "tokenizer.json": None,  # a resume reads the data's tokenizer: it goes on; loading refuses
    "state/optimizer.safetensors": "optimizer.safetensors",
    "state/rng_0.safetensors": "rng_0.safetensors: unreadable RNG state",
    # tinylm 0.1's pickles: refused unless trusted (their new-format twins removed)
    "state/random_states_0.pkl": "RNG state in pickle format (tinylm 0.1); pickle can run code, so "
                                 "it is not read: resume without it with checkpoint.restore_rng=false",
    "state/optimizer.bin": "optimizer state in pickle format (tinylm 0.1); pickle can run code",
}


@pytest.mark.parametrize("slot", list(SLOTS))
def test_a_planted_pickle_in_any_file_never_runs(tmp_path, saved, prose_corpus, slot):
    run = tmp_path / "run"
    shutil.copytree(saved / "run", run)
    step = run / "checkpoints" / "step-5"
    marker = tmp_path / "pwned"
    (step / "manifest.json").unlink()  # as tinylm 0.1 wrote them (pickles come from there): no
    # manifest to catch the planted file first (test_manifest.py covers that)
    (step / slot).write_bytes(pickle.dumps(Planted(marker)))
    twins = {"state/random_states_0.pkl": "state/rng_0.safetensors",
             "state/optimizer.bin": "state/optimizer.safetensors"}
    if slot in twins:
        (step / twins[slot]).unlink()
    cfg = load_config("configs/tiny.yaml", tiny_overrides(tmp_path, prose_corpus, **{
        "optim.max_steps": 8, "checkpoint.resume": "auto"}))
    try:
        if SLOTS[slot] is None:
            assert train(cfg)["step"] == 8
            with pytest.raises(ckpt.CheckpointError, match="tokenizer.json: not a valid tokenizer.json") as e:
                load_for_inference(step)
        else:
            with pytest.raises((ckpt.CheckpointError, DataError), match=SLOTS[slot].replace("(", r"\(")
                               .replace(")", r"\)")) as e:
                train(cfg)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert len(str(e.value).splitlines()) == 1 and str(step) in str(e.value)
    assert not marker.exists()
    if slot == "state/random_states_0.pkl":  # trusted: torch's weights_only loader still refuses it
        trusting = load_config("configs/tiny.yaml", tiny_overrides(tmp_path, prose_corpus, **{
            "optim.max_steps": 8, "checkpoint.resume": "auto", "checkpoint.trust_pickle": True}))
        try:
            with pytest.raises(ckpt.CheckpointError, match="random_states_0.pkl: unreadable RNG state "
                               r"\(UnpicklingError\)"):
                train(trusting)
        finally:
            AcceleratorState._reset_state(reset_partial_state=True)
        assert not marker.exists()


def test_resume_without_the_random_state_goes_on(tmp_path, saved, prose_corpus, capsys):
    run = tmp_path / "run"
    shutil.copytree(saved / "run", run)
    (run / "checkpoints" / "step-5" / "state" / "rng_0.safetensors").unlink()
    (run / "checkpoints" / "step-5" / "manifest.json").unlink()  # (it would list the RNG file)
    cfg = load_config("configs/tiny.yaml", tiny_overrides(tmp_path, prose_corpus, **{
        "optim.max_steps": 8, "checkpoint.resume": "auto", "checkpoint.restore_rng": False}))
    try:
        summary = train(cfg)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert summary["step"] == 8 and "resuming without the random states" in capsys.readouterr().out


def test_a_trusted_tinylm_01_rng_pickle_is_restored(tmp_path):
    """What accelerate wrote for tinylm 0.1, read with checkpoint.trust_pickle (weights_only)."""
    from accelerate import PartialState
    from accelerate.checkpointing import save_accelerator_state

    from tinylm.checkpoint import rng

    PartialState(cpu=True)  # accelerate's saver logs through its state
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    try:
        save_accelerator_state(str(tmp_path), [], [], [], [], 0, 0)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    with pytest.raises(ckpt.CheckpointError, match="checkpoint.trust_pickle=true"):
        rng.check_rng(tmp_path, 0, trust_pickle=False)
    load_rng(tmp_path, _Process(), trust_pickle=True)
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])
