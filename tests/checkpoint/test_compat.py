"""A checkpoint written by an earlier tinylm loads and resumes (torchtitan's
``checkpoint_compat_test``): the promise that a change to the code or the format does not strand
the checkpoints users already have.

``tests/assets/checkpoint-<N>/`` holds what a run of format ``tinylm-checkpoint-<N>`` left:
``corpus.txt`` and ``tokenizer.json`` (given to the run, so preparing the data again gives the
same tokens whatever the tokenizers library's BPE trainer does), ``run/checkpoints/step-4/``
(configs/tiny.yaml, one process, fp32), and ``made.json``: the commit and overrides of the run
and the losses of its 8 steps, trained without interruption. Today's code resumes step 4 and
must log the same losses for steps 5-8 (rtol 1e-3, as the golden curve: fp32 rounding differs
between CPUs). The test sees a broken resume: with the AdamW moments zeroed, steps 6-8 move by
6.4e-3 to 7.6e-3 (measured), and a lost data position or step count fails outright.

The rule for ``CHECKPOINT_FORMAT`` (docs/reliability.md): an asset is never regenerated or
replaced. A new format gets a new asset directory beside the old ones, made by

    TINYLM_MAKE_CHECKPOINT_ASSET=1 python -m pytest tests/checkpoint/test_compat.py

and every older asset's test stays green (through a reader for the old format).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from accelerate.state import AcceleratorState

from conftest import corpus_text
from helpers import REPO
from tinylm.checkpoint import format as ckpt
from tinylm.checkpoint.manifest import problems
from tinylm.data.tokenizer import Tokenizer
from tinylm.train.config import load_config
from tinylm.train.metrics import read_metrics
from tinylm.train.trainer import train

ASSETS = REPO / "tests" / "assets"
FORMAT = ckpt.CHECKPOINT_FORMAT.rsplit("-", 1)[1]
OVERRIDES = ["run_dir=run", "data.dir=data", "data.source=corpus.txt", "data.tokenizer=tokenizer.json",
             "seed=1337", "optim.mixed_precision=no", "optim.max_steps=8", "checkpoint.interval=4",
             "log.interval=1", "log.plot=false", "log.wandb=disabled", "cpu_threads=1"]


def run(overrides: list[str]) -> list[float]:
    """Train configs/tiny.yaml in the current directory; the logged train losses."""
    AcceleratorState._reset_state(reset_partial_state=True)
    train(load_config("tiny", overrides))
    AcceleratorState._reset_state(reset_partial_state=True)
    return [r["loss"] for r in read_metrics(Path("run") / "metrics.jsonl") if r["kind"] == "train"]


def make_asset(target: Path, work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Train 8 steps uninterrupted in ``work``; keep step 4 and the losses in ``target``."""
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    Path("corpus.txt").write_text(corpus_text(40_000, seed=11), encoding="utf-8")
    Tokenizer.train([Path("corpus.txt").read_text(encoding="utf-8")], vocab_size=320).save("tokenizer.json")
    losses = run(OVERRIDES)
    git = ["git", "-C", str(REPO)]
    commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True,
                            timeout=30).stdout.strip()
    dirty = bool(subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=30).stdout.strip())
    target.mkdir(parents=True)
    for name in ("corpus.txt", "tokenizer.json"):
        shutil.copy(name, target / name)
    shutil.copytree("run/checkpoints/step-4", target / "run" / "checkpoints" / "step-4")
    (target / "made.json").write_text(json.dumps({
        "format": ckpt.CHECKPOINT_FORMAT, "commit": commit, "uncommitted_changes": dirty, "config": "configs/tiny.yaml",
        "overrides": OVERRIDES, "resume_from": "run/checkpoints/step-4", "losses": losses},
        indent=1) + "\n")


def assets() -> list[Path]:
    return sorted(ASSETS.glob("checkpoint-*"))


@pytest.mark.usefixtures("in_process_training")
@pytest.mark.parametrize("asset", assets(), ids=lambda p: p.name)
def test_an_earlier_checkpoint_loads_and_resumes_to_the_same_losses(asset, tmp_path, monkeypatch):
    made = json.loads((asset / "made.json").read_text())
    here = tmp_path / asset.name
    shutil.copytree(asset, here)  # a copy elsewhere: new paths and mtimes, the same tokens
    monkeypatch.chdir(here)
    step4 = Path(made["resume_from"])
    assert problems(step4) == []  # its manifest still checks out, file by file
    model, _ = ckpt.load_model(step4)
    assert model.lm_head.weight is model.embed_tokens.weight
    losses = run([*made["overrides"], f"checkpoint.resume={step4}"])
    assert len(losses) == 4, losses  # steps 5-8 only: it resumed, it did not start over
    for step, (got, want) in enumerate(zip(losses, made["losses"][4:]), start=5):
        assert got == pytest.approx(want, rel=1e-3), f"step {step}: {got}, the run that made it {want}"


def test_todays_format_has_an_asset(tmp_path, monkeypatch):
    """A new CHECKPOINT_FORMAT comes with its asset (made here on request, then committed)."""
    target = ASSETS / f"checkpoint-{FORMAT}"
    if os.environ.get("TINYLM_MAKE_CHECKPOINT_ASSET") == "1" and not target.exists():
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
        make_asset(target, tmp_path / "make", monkeypatch)
        pytest.skip(f"made {target}: commit it")
    assert target.is_dir(), (f"no {target} for {ckpt.CHECKPOINT_FORMAT}: make it with "
                             "TINYLM_MAKE_CHECKPOINT_ASSET=1 (see this module's docstring)")
