"""The local pool: 1, 2 or 3 workers write the same store; a preparation killed with SIGKILL
midway reruns only its missing units and ends in the same store; one bar, one summary line."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import corpus_text
from helpers import small_tmpfs
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


@pytest.fixture
def small_disk(tmp_path: Path):
    """A real 400 KiB filesystem (helpers.small_tmpfs), or a skip."""
    with small_tmpfs(tmp_path / "disk", "400k") as disk:
        yield disk


@pytest.mark.slow
def test_a_full_disk_keeps_the_finished_shards_and_the_rerun_continues(big_text: Path,
                                                                       tmp_path: Path,
                                                                       small_disk: Path) -> None:
    """~1.4 MB of text is ~0.8 MB of shards: the disk fills midway. One error line, exit 2;
    every finished shard still verifies, no temporary is left; after the disk grows, the rerun
    runs only the missing units and ends in the store a clean run writes."""
    text = tmp_path / "corpus.txt"
    text.write_text(big_text.read_text() * 4)
    args = [sys.executable, "-m", "tinylm.cli", "prepare", f"data.source={text}",
            f"data.dir={small_disk}", "data.vocab_size=400", "data.shard_bytes=50000",
            "data.workers=2"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    full = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    errors = [line for line in full.stderr.splitlines() if line.startswith("error:")]
    assert full.returncode == 2 and len(errors) == 1, full.stderr[-3000:]
    assert "No space left on device" in errors[0] and "Traceback" not in full.stderr
    (store,) = small_disk.iterdir()
    done = sorted(store.glob("train-*.json"))
    assert done and not (store / "manifest.json").exists() and not list(store.glob(".*.tmp"))
    for marker in done:
        m = json.loads(marker.read_text())
        shard = marker.with_suffix(".bin")
        assert hashlib.sha256(shard.read_bytes()).hexdigest() == m["sha256"]
    stamps = {p.name: p.stat().st_mtime_ns for p in store.glob("train-*.bin") if
              p.with_suffix(".json").exists()}
    subprocess.run(["mount", "-o", "remount,size=4m", str(small_disk)], check=True, timeout=30)
    again = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert {n: (store / n).stat().st_mtime_ns for n in stamps} == stamps  # kept, not redone
    clean = prepare(DataConfig(source=str(text), dir=str(tmp_path / "clean"), vocab_size=400,
                               shard_bytes=50_000), progress=False)
    assert json.loads((store / "manifest.json").read_text())["fingerprint"] == \
        clean.meta["fingerprint"]
