"""benchmarks/gpu.py stays runnable between GPU sessions: its CPU dry run goes through the same
code (real accelerate launches of the gpt2-small preset, shrunk; generation; the sync check),
and the card -> peak table gives MFU only for cards it knows."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helpers import REPO, env, write_corpus
from tinylm.train.hardware import bf16_peak_flops, mfu


@pytest.mark.parametrize("name, peak", [
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H200", 989e12),
    ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA L4", 121e12), ("NVIDIA L40S", 362e12),
    ("NVIDIA A10G", None), ("Some Future GPU", None)])
def test_dense_bf16_peaks_by_card_name(name, peak):
    assert bf16_peak_flops(name) == peak


def test_mfu_is_none_without_a_known_peak():
    assert mfu(1e5, 1e9, None) is None and mfu(1e5, 1e9, "Some Future GPU") is None
    assert mfu(494_500.0, 1e9, "NVIDIA H100 80GB HBM3") == pytest.approx(0.5)


@pytest.mark.slow
def test_dry_run_prints_the_table_on_cpu(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.txt", 200_000)
    out = tmp_path / "rows.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu.py"), "--dry-run",
                           "--text", str(corpus), "--json", str(out)], capture_output=True,
                          text=True, env=env(tmp_path), cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [x for x in proc.stdout.splitlines() if x.startswith("|")]
    assert lines[0] == "| row | setting | tokens/s | ms/step | x base | peak GiB | MFU | note |"
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert result["card"] == "CPU (dry run)"
    train = [r for r in rows if r["row"] == "train"]
    assert [r["setting"] for r in train] == ["base", "parallel.strategy=fsdp2",
                                             "optim.adamw=foreach", "optim.batch_size=8",
                                             "model.activation_checkpointing=true"]
    base = train[0]
    for r in train:
        assert r["tokens/s"] > 0 and r["MFU"] is None and r["peak GiB"] is None  # CPU: none
        assert r["x base"] == pytest.approx(r["tokens/s"] / base["tokens/s"])
        # tokens per step / seconds per step: the two columns come from the same clock
        batch = 8 if "batch_size=8" in r["setting"] else 4
        assert r["tokens/s"] == pytest.approx(batch * 64 / (r["ms/step"] / 1000), rel=1e-6)
    gen = [r for r in rows if r["row"] == "generate"]
    assert [r["setting"] for r in gen] == ["batch 1, KV cache, eager",
                                           "batch 8, KV cache, eager"]  # CUDA adds graph rows
    assert all(r["tokens/s"] > 0 for r in gen)
    syncs = [r for r in rows if r["row"] == "sync check"]
    assert [r["setting"] for r in syncs] == ["base, every 500 steps (preset)",
                                             "fsdp2, every 500 steps (preset)"]
    for sync, run in zip(syncs, (base, train[1])):
        assert sync["ms/step"] > 0
        assert sync["overhead_pct"] == pytest.approx(100 * sync["ms/step"] / (500 * run["ms/step"]))
        assert sync["note"] == f"overhead {sync['overhead_pct']:.4f}%"
    assert len(lines) == 2 + len(rows)  # header, rule, one line per row
