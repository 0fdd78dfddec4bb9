"""The benchmarks run end to end from a clone (on the tiny config, so in seconds): their
numbers come from real training runs and real steps, and their tables have every row."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import env, write_corpus

REPO = Path(__file__).resolve().parents[2]


def run_bench(script: str, args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args],
                          capture_output=True, text=True, cwd=REPO, env=env(tmp), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_bench_step_times_variants_in_one_process(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.txt")
    out = tmp_path / "rows.json"
    proc = run_bench("bench_step.py", ["configs/tiny.yaml", "--text", str(corpus), "--rounds", "2",
                                       "--steps", "2", "--variant", "loop:optim.adamw=loop",
                                       "--variant", "b4:optim.batch_size=4", "--json", str(out)],
                     tmp_path)
    rows = json.loads(out.read_text())
    assert [r["name"] for r in rows] == ["base", "loop", "b4"]
    for r in rows:
        assert r["step_ms"] > 0 and r["bytes_per_token"] > 1.5  # real BPE on real text
        assert r["bytes_s"] == pytest.approx(r["tokens_s"] * r["bytes_per_token"])
    assert rows[2]["tokens_s"] == pytest.approx(4 * 32 / rows[2]["step_ms"] * 1000)  # batch 4 x block 32
    table = [line for line in proc.stdout.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 3  # header, rule, one line per variant


def test_time_to_target_is_the_first_eval_at_or_under_it():
    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench import time_to_target

    evals = [{"time": 105.0, "val_bits_per_byte": 4.0}, {"time": 110.0, "val_bits_per_byte": 3.0},
             {"time": 115.0, "val_bits_per_byte": 3.2}, {"time": 120.0, "val_bits_per_byte": 2.5}]
    assert time_to_target(evals, 3.1, t0=100.0) == 10.0
    assert time_to_target(evals, 2.5, t0=100.0) == 20.0  # "at or under"
    assert time_to_target(evals, 4.0, t0=100.0) == 5.0
    assert time_to_target(evals, 2.4, t0=100.0) is None


def test_bench_runs_real_training_and_reports_an_unreached_target(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.txt")
    out = tmp_path / "rows.json"
    proc = run_bench("bench.py", ["configs/tiny.yaml", str(corpus), "--target", "0.01",
                                  "--variant", "s20:optim.max_steps=20", "--json", str(out)],
                     tmp_path)
    base, short = json.loads(out.read_text())
    assert (base["steps"], short["steps"]) == (30, 20)
    for r in (base, short):
        assert r["time_to_target_s"] is None  # 0.01 bits/byte: no tiny model gets there
        assert math.isfinite(r["final_bpb"]) and r["final_bpb"] > 0
        assert r["tokens_s"] > 0 and r["gen_tok_s"] > 0 and r["prepare_MB_s"] > 0
        assert r["sync_check_ms"] is not None  # the run logged its tied-parameter sync checks
    assert base["final_bpb"] < short["final_bpb"]  # 30 steps learn more than 20
    assert "| s20 | optim.max_steps=20 |" in proc.stdout


@pytest.mark.slow
def test_bench_golf_trains_packs_and_scores_variants_of_equal_bytes(tmp_path):
    """Two variants for a few seconds each: each row is a real run, packed at int8 and int6
    and scored after the round trip; the looped one is fitted to the baseline's bytes."""
    corpus = write_corpus(tmp_path / "corpus.txt")
    proc = run_bench("bench_golf.py", [str(corpus), "--budget", "8", "--only", "baseline", "repeat2"],
                     tmp_path)
    rows = [line.split("|")[1:-1] for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert [r[0].split(":")[0].strip() for r in rows[1:]] == ["baseline", "repeat2"]
    (base, looped) = [[c.strip() for c in r] for r in rows[1:]]
    params = [float(r[2].rstrip("M")) for r in (base, looped)]
    assert abs(params[1] - params[0]) / params[0] < 0.1 and looped[3] == "10"  # 10 depths
    for r in (base, looped):
        int8_bytes, int6_bytes = int(r[8].replace(",", "")), int(r[10].replace(",", ""))
        assert int6_bytes < 0.85 * int8_bytes and int(r[4]) > 0  # steps were taken
        assert abs(float(r[9]) - float(r[7])) < 0.05 and abs(float(r[11]) - float(r[7])) < 0.1
    assert "(baseline int6, clip std:" in proc.stdout


@pytest.mark.slow
def test_exit_status_counts_real_launches(tmp_path):
    """Two real 2-process launches, both finished and exiting 0 (the flake's count tool)."""
    proc = run_bench("exit_status.py", ["--launches", "2", "--work", str(tmp_path / "w")], tmp_path)
    assert "2 launches of 2 CPU processes" in proc.stdout
    assert [line for line in proc.stdout.splitlines() if line.startswith("| ok")] == ["| ok | 2 |"]
    assert not list((tmp_path / "w").glob("launch-*"))  # a launch that exits 0 leaves nothing
