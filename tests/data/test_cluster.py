"""prepare's units as a datatrove pipeline (tinylm.data.cluster): datatrove's local executor,
with several workers, writes the very store a plain prepare writes and a run trains on it; a
relaunch redoes only the task whose shard went missing; Slurm's submission is checked against
a fake sbatch, and its pickled tasks are then run the way Slurm would run them."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("datatrove")

from helpers import REPO, quiet_env, tiny_overrides, write_corpus  # noqa: E402
from tinylm.cli import main  # noqa: E402
from tinylm.data.cluster import finished, run_units_with  # noqa: E402
from tinylm.data.prepare import prepare  # noqa: E402
from tinylm.data.store import read_plan, unit_count  # noqa: E402
from tinylm.train.config import load_config  # noqa: E402

UNIT = 4096  # bytes of input per unit: a 40 KB corpus is ~10 units


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "corpus.txt", 40_000)


def config(tmp: Path, corpus: Path, **extra):
    return load_config("tiny",  # the preset by name: one test runs from another directory
                       tiny_overrides(tmp, corpus, **{"data.shard_bytes": UNIT, **extra}))


def shards(manifest: dict) -> list[tuple]:
    return [(s["shard"], s["tokens"], s["bytes"], s["sha256"]) for s in manifest["shards"]]


def mtimes(store: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in store.glob("train-*")}


@pytest.mark.slow
def test_datatrove_writes_the_store_a_plain_prepare_writes_and_a_run_trains_on_it(
        tmp_path, corpus, in_process_training):
    from tinylm.train.trainer import train  # torch: only this test needs it

    plain = prepare(config(tmp_path / "plain", corpus).data, progress=False)
    cfg = config(tmp_path / "dt", corpus, **{"optim.max_steps": 3, "eval.interval": 3,
                                             "checkpoint.interval": 3})
    data = prepare(cfg.data, progress=False, run_units=run_units_with("local", workers=3))
    n = unit_count(data.dir)
    assert n >= 6 and len(shards(data.meta)) >= 6
    assert shards(data.meta) == shards(plain.meta)
    assert data.meta["fingerprint"] == plain.meta["fingerprint"]
    assert len(list((data.dir / "datatrove" / "tokenize" / "completions").iterdir())) == n

    sealed = (data.dir / "manifest.json").stat().st_mtime_ns
    summary = train(cfg)  # finds the sealed store and trains on it as it is
    assert math.isfinite(summary["val"]["loss"]) and summary["val"]["tokens"] > 0
    assert (data.dir / "manifest.json").stat().st_mtime_ns == sealed


@pytest.mark.slow
@pytest.mark.parametrize("lost", ["shard and marker", "shard"])
def test_a_relaunch_redoes_only_the_unit_whose_shard_is_gone(tmp_path, corpus, lost):
    cfg = config(tmp_path, corpus).data
    logs = tmp_path / "logs"  # the same logging dir both times: its completions are kept
    run_units = run_units_with("local", workers=2, logging_dir=str(logs))
    first = prepare(cfg, progress=False, run_units=run_units)
    store, n = first.dir, unit_count(first.dir)
    k = n // 2
    shard = store / read_plan(store)["units"][k]["shard"]
    (store / "manifest.json").unlink()  # unsealed, as a launch killed before its seal leaves it
    shard.unlink()  # (prepare refuses a sealed store with a shard missing: see stream.py)
    if lost == "shard and marker":
        shard.with_suffix(".json").unlink()
    assert k not in finished(store) and (logs / "tokenize" / "completions" / f"{k:05d}").is_file()
    before = mtimes(store)

    again = prepare(cfg, progress=False, run_units=run_units)
    stats = json.loads((logs / "tokenize" / "stats.json").read_text())  # this launch's tasks
    assert stats[0]["stats"]["units"] == 1 and "units_skipped" not in stats[0]["stats"]
    after = mtimes(store)
    assert {name for name in after if after[name] != before.get(name)} == {
        shard.name, shard.with_suffix(".json").name}
    assert shards(again.meta) == shards(first.meta)


@pytest.mark.slow
def test_slurm_submits_a_tokenize_array_then_a_seal_job_that_depends_on_it(
        tmp_path, corpus, monkeypatch):
    """sbatch is a fake that records what it is given; the array's tasks are then run as
    Slurm runs them (launch_pickled_pipeline with SLURM_ARRAY_TASK_ID), the seal task last."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    calls.mkdir()
    (bin_dir / "sbatch").write_text(
        '#!/bin/sh\nn=$(ls "$FAKE_SLURM" | grep -c args)\nprintf "%s\\n" "$@" > '
        '"$FAKE_SLURM/$n.args"\nfor a; do last=$a; done\ncp "$last" "$FAKE_SLURM/$n.sh"\n'
        'echo "Submitted batch job $((100 + n))"\n')
    (bin_dir / "scontrol").write_text("#!/bin/sh\necho localhost\n")  # show hostnames
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM", str(calls))
    monkeypatch.chdir(tmp_path)

    cfg = config(tmp_path / "dt", corpus).data
    run_units = run_units_with("slurm", tasks=3, slurm={"partition": "cpu", "time": "0:10:00"})
    assert prepare(cfg, progress=False, run_units=run_units) is None  # submitted, not sealed
    store = next((tmp_path / "dt" / "data").iterdir())
    assert not (store / "manifest.json").exists()
    scripts = [(calls / f"{i}.sh").read_text() for i in range(4)]
    args = [(calls / f"{i}.args").read_text().split() for i in range(4)]
    # datatrove submits: the tokenize array, its stats merge, the seal job, its stats merge
    assert "#SBATCH --array=0-2" in scripts[0] and "#SBATCH --partition=cpu" in scripts[0]
    assert "launch_pickled_pipeline" in scripts[0] and f"source {sys.prefix}" in scripts[0]
    assert "#SBATCH --array=0-0" in scripts[2] and "--kill-on-invalid-dep=yes" in scripts[2]
    assert "--dependency=afterok:100" in args[2]  # the seal waits for the whole array

    launch = Path(sys.executable).parent / "launch_pickled_pipeline"
    env = {**quiet_env(tmp_path), "SLURM_NODELIST": "localhost", "RUN_OFFSET": "0"}
    jobs = [("tokenize", i) for i in range(3)] + [("seal", 0)]
    for job, task in jobs:
        proc = subprocess.run([str(launch), str(store / "datatrove" / job / "executor.pik")],
                              env={**env, "SLURM_ARRAY_TASK_ID": str(task)}, cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, (job, task, proc.stderr[-3000:])
    manifest = json.loads((store / "manifest.json").read_text())
    plain = prepare(config(tmp_path / "plain", corpus).data, progress=False)
    assert shards(manifest) == shards(plain.meta)
    assert prepare(cfg, progress=False).meta["fingerprint"] == plain.meta["fingerprint"]


@pytest.mark.parametrize("argv, message", [
    (["--executor", "slurm"], "error: the slurm executor needs a partition and a time limit"),
    (["--tasks", "4"], "error: --tasks needs --executor"),
    (["--executor", "local", "--workers", "0"], "error: --tasks and --workers: expected >= 1"),
    pytest.param(["--executor", "ray"], "error: ray is not installed: pip install 'datatrove[ray]'",
                 marks=pytest.mark.skipif(importlib.util.find_spec("ray") is not None,
                                          reason="ray is installed here")),
])
def test_executor_flags_are_checked_before_any_work(tmp_path, argv, message, capsys):
    status = main(["prepare", f"data.dir={tmp_path / 'data'}", *argv])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith(message) and err.count("\n") == 1, err
    assert not (tmp_path / "data").exists()


def test_the_parser_imports_no_datatrove_and_a_missing_one_is_one_line(tmp_path, corpus):
    code = ("import sys; from tinylm.cli import build_parser, main; "
            "a = build_parser().parse_args(['prepare', '--executor', 'ray', '--tasks', '4']); "
            "assert a.executor == 'ray' and a.tasks == 4; "
            "assert not {'torch', 'datatrove'} & set(sys.modules), 'the parser imported them'; "
            "sys.modules['datatrove'] = None; "  # as if not installed: its import fails
            f"sys.exit(main(['prepare', 'data.source={corpus}', 'data.dir={tmp_path / 'd'}', "
            "'--executor', 'local']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=quiet_env(tmp_path), cwd=REPO, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr == "error: datatrove is not installed: pip install 'tinylm[cluster]'\n"
