"""benchmarks/bench_tasks.py end to end at the default shape (seconds): a table row with both
variants and their ratio, and task files in the Hub schemas that tinylm's loader reads."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from helpers import env
from tinylm.eval.tasks import load_items, parse_task

REPO = Path(__file__).resolve().parents[2]


def test_bench_tasks_prints_both_variants_and_writes_loadable_tasks(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_tasks.py"), "--items",
                           "6", "--gpt2-items", "0", "--repeat", "1", "--write-tasks",
                           str(tmp_path / "tasks")], capture_output=True, text=True, cwd=REPO,
                          env=env(tmp_path), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "CPU: " in proc.stdout
    row = re.search(r"^default\s+6\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)x$", proc.stdout, re.M)
    assert row, proc.stdout
    packed, one, ratio = map(float, row.groups())
    assert packed > 0 and one > 0 and abs(ratio - packed / one) < 0.01 + 0.01 * ratio
    for name in ("hellaswag", "arc_easy", "piqa", "lambada_openai"):
        items = load_items(parse_task(f"{name}={tmp_path / 'tasks' / (name + '.jsonl')}"))
        assert len(items) == 200 and len(items[0].contexts[0]) > 20
