"""Shared fixtures. No test may touch the network or ~/.cache.

``datasets`` reads HF_HOME once, when it is first imported, so the session's HF_HOME is set
here, at conftest import, before any test module imports it; the Hub is switched to offline
mode for the same reason. ``hf_cache`` gives one test its own datasets cache on top of that.
"""

from __future__ import annotations

import atexit
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

_HF_HOME = tempfile.mkdtemp(prefix="tinylm-test-hf-")
atexit.register(shutil.rmtree, _HF_HOME, True)
os.environ["HF_HOME"] = _HF_HOME
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

WORDS = ("the of and a to in is you that it he was for on are as with his they I at be this "
         "have from or one had by word but not what all were we when your can said there use "
         "an each which she do how their if will up other about out many then them these so "
         "naïve café Straße façade 日本語 ünïcödé ĉu 🙂 λόγος").split()


def corpus_text(n_chars: int, seed: int = 0) -> str:
    """Deterministic pseudo-English with paragraphs and some non-ASCII words."""
    rng, parts, size = random.Random(seed), [], 0
    while size < n_chars:
        sentence = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14))).capitalize()
        sep = "\n\n" if rng.random() < 0.15 else ("\n" if rng.random() < 0.3 else " ")
        parts.append(sentence + "." + sep)
        size += len(parts[-1])
    return "".join(parts)


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh HF_HOME (and datasets cache) for one test."""
    import datasets

    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", home / "datasets")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(home / "datasets"))
    return home


@pytest.fixture(scope="session", autouse=True)
def _session_hf_cache() -> Iterator[Path]:
    """Every test, and every subprocess a test starts, uses the session's temporary HF_HOME
    and datasets cache, even if something imported ``datasets`` before this conftest (its
    cache path is read at import): a test run never reads or fills ~/.cache/huggingface."""
    import datasets

    cache = Path(_HF_HOME) / "datasets"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HOME", _HF_HOME)
        mp.setenv("HF_DATASETS_CACHE", str(cache))
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
        yield Path(_HF_HOME)


@pytest.fixture(autouse=True)
def _wandb_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    """WANDB_MODE=disabled for every test (and its subprocesses): online mode would block or
    fail without network. A test that wants offline runs sets WANDB_MODE itself (after this
    fixture, so its value wins) or passes it in a subprocess's env."""
    monkeypatch.setenv("WANDB_MODE", "disabled")


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    """~20 KB of UTF-8 text with LF line breaks, no BOM."""
    path = tmp_path / "corpus.txt"
    path.write_text(corpus_text(20_000), encoding="utf-8")
    return path


@pytest.fixture
def corpus_dir(tmp_path: Path) -> Path:
    """A folder of three documents (one nested, one .md) and a hidden file to skip."""
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text(corpus_text(6000, seed=1), encoding="utf-8")
    (root / "b.md").write_text(corpus_text(6000, seed=2), encoding="utf-8")
    (root / "sub" / "c.txt").write_text(corpus_text(6000, seed=3), encoding="utf-8")
    (root / ".hidden.txt").write_text("never read", encoding="utf-8")
    return root


@pytest.fixture(scope="session")
def python_docs_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real python-docs corpus, built once per session (~5 s)."""
    from tinylm.data.corpus import build_python_docs

    return build_python_docs(tmp_path_factory.mktemp("pydocs"), progress=False)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread for a module of tiny-tensor tests, restored afterwards: with two
    intra-op threads on 2 shared cores, thread hand-offs cost far more than the math."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


VAL_TEXT = ("Validation prose with a few multi-byte characters: naïve café, Straße, 日本語, "
            "λόγος, 🙂.\n\nIt repeats so the split spans several blocks of the tiny model.\n") * 40


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 10-step run of configs/tiny.yaml by scripts/train.py (a real process), checkpoints at
    steps 5 and 10, its val split the separate file VAL_TEXT; made once per session and shared
    by the evaluate and generate tests."""
    import subprocess
    import sys

    from helpers import REPO, quiet_env, tiny_overrides, write_corpus

    base = tmp_path_factory.mktemp("tiny-run")
    corpus = write_corpus(base / "corpus.txt", 60_000)
    (base / "val.txt").write_text(VAL_TEXT, encoding="utf-8")
    args = tiny_overrides(base, corpus, **{"data.val_source": base / "val.txt",
                                            "optim.max_steps": 10, "checkpoint.interval": 5})
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"), "configs/tiny.yaml",
                           *args], capture_output=True, text=True, env=quiet_env(base), cwd=REPO,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return base / "run"


@pytest.fixture(scope="module")
def prose_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~150 KB of real English prose (helpers.write_corpus), one file per test module."""
    from helpers import write_corpus

    return write_corpus(tmp_path_factory.mktemp("corpus") / "corpus.txt")


@pytest.fixture
def in_process_training(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """For tests that call train() in this process: their own HF cache, and accelerate's
    process-wide state reset afterwards (the next test may ask for another precision)."""
    from accelerate.state import AcceleratorState

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
