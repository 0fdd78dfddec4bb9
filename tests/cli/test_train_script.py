"""scripts/train.py as users run it: exit codes, one-line errors, signals, offline wandb."""

import signal
import subprocess
import sys
import threading
import time

import pytest

from helpers import REPO, env, tiny_overrides, write_corpus

TRAIN = [sys.executable, str(REPO / "scripts" / "train.py"), "configs/tiny.yaml"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus") / "corpus.txt", 60_000)


def run(args, tmp_path):
    return subprocess.run(TRAIN + args, capture_output=True, text=True, env=env(tmp_path),
                          cwd=REPO, timeout=300)


def test_config_typo_is_one_line_exit_2(tmp_path):
    p = run(["model.n_layr=3"], tmp_path)
    assert p.returncode == 2
    assert p.stderr.strip() == ("error: override 'model.n_layr=3': unknown key 'model.n_layr' "
                                "(did you mean 'n_layer'?)")


def test_non_utf8_corpus_is_one_line_exit_2(tmp_path, corpus):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"hello world\n" * 10 + b"\xff\xfe oops\n")
    p = run(tiny_overrides(tmp_path, bad), tmp_path)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines()[-1] == f"error: {bad}: not valid UTF-8 at byte 120"


def test_sigterm_saves_a_checkpoint_and_exits_143(tmp_path, corpus):
    args = tiny_overrides(tmp_path, corpus, **{"optim.max_steps": 100000, "log.interval": 1,
                                                "checkpoint.interval": 0, "eval.interval": 0})
    p = subprocess.Popen(TRAIN + args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env=env(tmp_path), cwd=REPO)
    watchdog = threading.Timer(180, p.kill)  # a run that never prints its step lines can't hang us
    watchdog.start()
    lines = []
    for line in p.stdout:  # wait until it is really training
        lines.append(line)
        if line.startswith("step") and "/100000" in line and "step      3/" in line:
            break
    p.send_signal(signal.SIGTERM)
    out = "".join(lines) + p.communicate(timeout=120)[0]
    watchdog.cancel()
    assert p.returncode == 128 + signal.SIGTERM, out[-2000:]
    assert "received signal SIGTERM" in out
    saved = list((tmp_path / "run" / "checkpoints").glob("step-*"))
    assert len(saved) == 1 and int(saved[0].name.split("-")[1]) >= 3


def test_wandb_offline_by_default_writes_an_offline_run(tmp_path, corpus):
    e = env(tmp_path)
    e.pop("WANDB_MODE")
    args = tiny_overrides(tmp_path, corpus, **{"log.wandb": "offline", "optim.max_steps": 5})
    t0 = time.time()
    p = subprocess.run(TRAIN + args, capture_output=True, text=True, env=e, cwd=REPO, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and time.time() - t0 < 120  # never waits on a network
