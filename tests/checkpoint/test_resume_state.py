"""The strategy-free optimizer file: by parameter name, safetensors, round-trips exactly, and
refuses what does not fit (in process; across strategies and process counts: test_parallel.py);
and the data fingerprint a resume must match."""

from __future__ import annotations

import json
import os

import pytest
import torch
from accelerate.state import AcceleratorState

from helpers import tiny_overrides

from tinylm.checkpoint.format import CheckpointError
from tinylm.checkpoint.resume_state import (OPTIMIZER_FILE, load_optimizer, optimizer_state,
                                            write_optimizer)
from tinylm.model.config import GPTConfig
from tinylm.model.gpt import GPT
from tinylm.train.config import load_config
from tinylm.train.optim import OptimConfig, build_optimizers
from tinylm.train.trainer import train


def trained(name: str = "adamw", n_layer: int = 1) -> tuple[GPT, list]:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, block_size=8, n_layer=n_layer, n_head=2, n_embd=16))
    opts = build_optimizers(model, OptimConfig(name=name))
    x = torch.randint(0, 50, (2, 8))
    for _ in range(2):
        model(x, x)[1].backward()
        for o in opts:
            o.step()
            o.zero_grad()
    return model, opts


@pytest.mark.parametrize("name", ["adamw", "muon"])
def test_round_trip_by_parameter_name_tie_stored_once(tmp_path, name):
    model, opts = trained(name)
    write_optimizer(optimizer_state(model, opts), tmp_path / OPTIMIZER_FILE)
    from safetensors import safe_open
    with safe_open(str(tmp_path / OPTIMIZER_FILE), "pt") as f:
        keys = list(f.keys())
    assert "state/embed_tokens.weight/exp_avg" in keys and not any("lm_head" in k for k in keys)
    fresh_model, fresh = trained(name)
    for o in fresh:  # other state, to be overwritten
        for st in o.state.values():
            for v in st.values():
                if torch.is_tensor(v) and v.is_floating_point():
                    v.add_(1.0)
    load_optimizer(fresh_model, fresh, tmp_path)
    for a, b in zip(opts, fresh):
        for pa, pb in zip([p for g in a.param_groups for p in g["params"]],
                          [p for g in b.param_groups for p in g["params"]]):
            for key, value in a.state[pa].items():
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(b.state[pb][key])), key


def test_state_for_another_model_is_refused(tmp_path):
    model, opts = trained(n_layer=1)
    write_optimizer(optimizer_state(model, opts), tmp_path / OPTIMIZER_FILE)
    other, other_opts = trained(n_layer=2)
    with pytest.raises(CheckpointError, match=r"optimizer state for \d+ parameters does not fit "
                                             r"this model's \d+ \(e\.g\. \['layers\.1\."):
        load_optimizer(other, other_opts, tmp_path)


def test_a_corrupt_file_is_one_error_naming_it(tmp_path):
    model, opts = trained()
    (tmp_path / OPTIMIZER_FILE).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    with pytest.raises(CheckpointError, match=f"{OPTIMIZER_FILE}: corrupt or unreadable"):
        load_optimizer(model, opts, tmp_path)


# -- the data fingerprint ----------------------------------------------------------------------

@pytest.mark.usefixtures("in_process_training")
def test_a_resume_after_the_data_changed_is_refused_unless_allowed(tmp_path, prose_corpus, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(prose_corpus.read_text())

    def run(**kw):
        AcceleratorState._reset_state(reset_partial_state=True)
        return train(load_config("tiny", tiny_overrides(tmp_path, corpus, **kw)))

    run(**{"optim.max_steps": 4})
    step4 = tmp_path / "run" / "checkpoints" / "step-4"
    saved = json.loads((step4 / "config.json").read_text())["data_fingerprint"]
    assert len(saved) == 16
    os.utime(corpus, (1e9, 1e9))  # touched: re-prepared, but the same tokens, so it resumes
    assert run(**{"optim.max_steps": 6, "checkpoint.resume": step4})["step"] == 6
    with corpus.open("a") as f:
        f.write("A paragraph that was not there when step 4 was saved.\n")
    with pytest.raises(CheckpointError, match=rf"the data changed since .*step-4 was saved "
                       rf"\(fingerprint {saved} -> [0-9a-f]{{16}}.*set checkpoint.allow_data_change=true"):
        run(**{"optim.max_steps": 8, "checkpoint.resume": step4})
    capsys.readouterr()
    summary = run(**{"optim.max_steps": 8, "checkpoint.resume": step4,
                     "checkpoint.allow_data_change": "true"})
    assert summary["step"] == 8
    assert "continuing because checkpoint.allow_data_change=true" in capsys.readouterr().out
