"""The local pool: 1, 2 or 3 workers write the same store; a preparation killed with SIGKILL
midway reruns only its missing units and ends in the same store; one bar, one summary line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import corpus_text
from tinylm.data.prepare import DataConfig, prepare, prepared_dir


def store_bytes(d) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.dir.glob("*-*.bin"))}


@pytest.fixture(scope="module")
def big_text(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pool") / "corpus.txt"
    path.write_text(corpus_text(400_000, seed=11))
    return path


def cfg(source: Path, root: Path, **kw) -> DataConfig:
    return DataConfig(source=str(source), dir=str(root), vocab_size=400,
                      **{"shard_bytes": 40_000, **kw})


@pytest.mark.slow
def test_one_two_and_three_workers_write_the_same_store(big_text: Path, tmp_path: Path,
                                                        capsys) -> None:
    stores = {w: prepare(cfg(big_text, tmp_path / f"w{w}", workers=w), progress=(w == 2))
              for w in (1, 2, 3)}
    assert len(stores[1].meta["shards"]) >= 9
    fingerprints = {d.meta["fingerprint"] for d in stores.values()}
    assert len(fingerprints) == 1
    assert store_bytes(stores[1]) == store_bytes(stores[2]) == store_bytes(stores[3])
    captured = capsys.readouterr()
    summary = [line for line in captured.out.splitlines() if line.startswith("prepared ")]
    assert len(summary) == 1 and "bytes/token" in summary[0] and "MB/s" in summary[0]
    assert "tokenizing" in captured.err  # the one bar (tqdm writes to stderr)


@pytest.mark.slow
def test_a_preparation_killed_midway_reruns_to_the_same_store(big_text: Path,
                                                             tmp_path: Path) -> None:
    reference = prepare(cfg(big_text, tmp_path / "ref", workers=1), progress=False)
    c = cfg(big_text, tmp_path / "killed", workers=2, shard_bytes=20_000)
    code = (f"from tinylm.data.prepare import DataConfig, prepare\n"
            f"prepare(DataConfig(source={str(big_text)!r}, dir={c.dir!r}, vocab_size=400, "
            f"shard_bytes=20000, workers=2), progress=False)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    out = prepared_dir(c)
    deadline = time.monotonic() + 60
    try:
        while len(list(out.glob("train-*.json"))) < 3:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no unit finished within 60 s"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its workers
        proc.wait(timeout=30)
    done = len(list(out.glob("train-*.json")))
    units = len(json.loads((out / "plan.json").read_text())["units"])
    assert not (out / "manifest.json").exists() and 3 <= done < units  # killed midway
    again = prepare(c, progress=False)
    clean = prepare(cfg(big_text, tmp_path / "clean", workers=1, shard_bytes=20_000),
                    progress=False)
    assert again.meta["fingerprint"] == clean.meta["fingerprint"]
    assert store_bytes(again) == store_bytes(clean)
    assert not list(out.glob(".*.tmp"))  # the killed writers' temporaries are gone
    # the shard size changes the unit boundaries, never the text: same bytes, same split point
    assert again.meta["train_bytes"] + again.meta["val_bytes"] == \
        reference.meta["train_bytes"] + reference.meta["val_bytes"]


def test_a_worker_error_is_one_line_naming_the_file_and_byte(tmp_path: Path) -> None:
    good = tmp_path / "corpus"
    good.mkdir()
    for i in range(4):
        (good / f"{i}.txt").write_text(corpus_text(30_000, seed=i))
    (good / "3.txt").write_bytes(b"fine text\n" * 100 + b"caf\xe9\n")
    with pytest.raises(Exception, match=r"3.txt: not valid UTF-8 at byte 1003$"):
        prepare(cfg(good, tmp_path / "d", workers=2, shard_bytes=30_000), progress=False)
