"""The golden loss curve: configs/tiny.yaml, one process, fp32, a fixed corpus and seed, trained
in this process and compared step by step with tests/train/assets/golden_loss_tiny.json.

Any change that moves the numbers of training (model, init, data order, tokenizer, optimizer,
schedule) fails here, on purpose. When a change is MEANT to move them, regenerate the file and
commit it with the change, saying why in the commit message:

    TINYLM_REGENERATE_GOLDEN=1 python -m pytest tests/train/test_golden_loss.py

Tolerance: rtol 1e-3, for fp32 rounding that differs between CPUs (AVX2 vs AVX-512 kernels;
1 vs 2 threads gave identical curves on the machine that wrote the file), while a real change
(another init, lr or batch order) moves the curve by 1e-2 or more within a few steps.
The corpus is conftest's seeded pseudo-English (Python's ``random`` is stable across versions),
not python-docs (which changes with the Python version).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState

from conftest import corpus_text
from tinylm.train.config import load_config
from tinylm.train.metrics import read_metrics
from tinylm.train.trainer import train

GOLDEN = Path(__file__).parent / "assets" / "golden_loss_tiny.json"


def tiny_losses(tmp_path: Path, threads: int) -> list[float]:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(corpus_text(80_000, seed=7), encoding="utf-8")
    cfg = load_config("tiny", [f"run_dir={tmp_path / 'run'}", f"data.dir={tmp_path / 'data'}",
                               f"data.source={corpus}", "data.vocab_size=320", "data.shuffle=randperm", "seed=1337",
                               "optim.mixed_precision=no", "log.interval=1", "log.plot=false",
                               "log.wandb=disabled", f"cpu_threads={threads}"])
    AcceleratorState._reset_state(reset_partial_state=True)
    train(cfg)
    AcceleratorState._reset_state(reset_partial_state=True)
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    return [r["loss"] for r in records if r["kind"] == "train"]


def test_loss_curve_matches_the_committed_one(tmp_path):
    before = torch.get_num_threads()
    try:
        losses = tiny_losses(tmp_path, threads=1)
    finally:
        torch.set_num_threads(before)
    assert len(losses) == 30
    if os.environ.get("TINYLM_REGENERATE_GOLDEN") == "1":
        GOLDEN.write_text(json.dumps({"config": "configs/tiny.yaml", "losses": losses}, indent=1) + "\n")
        pytest.skip(f"regenerated {GOLDEN}")
    golden = json.loads(GOLDEN.read_text())["losses"]
    for step, (got, want) in enumerate(zip(losses, golden), start=1):
        assert got == pytest.approx(want, rel=1e-3), f"step {step}: loss {got}, golden {want}"
