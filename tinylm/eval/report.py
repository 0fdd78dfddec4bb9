"""A run's reference card: ``report.md`` beside ``loss.png``, what a person reads instead of logs.

It holds the config, the machine, wall time, tokens, the final bits per byte, the task scores
(the last in-loop evaluation, and every one over steps), sample generations of the newest
checkpoint at a fixed seed, and the plot (loss.png: loss, and task scores in a second panel).
Everything comes from the run directory (config.yaml, metrics.jsonl, checkpoints/), so it can be
written long after the run; the machine named is the one writing the report.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import torch

from tinylm.checkpoint.format import CheckpointError, latest_checkpoint
from tinylm.checkpoint.load import load_for_inference
from tinylm.common.atomic import atomic_write
from tinylm.infer.generate import generate

PROMPTS = ("The", "In this section we", "A function that")  # fixed: cards compare across runs


def machine() -> str:
    """The GPU's name, else the CPU's model name (``/proc/cpuinfo``, as lscpu shows it)."""
    if torch.cuda.is_available():
        return f"GPU: {torch.cuda.get_device_name()}"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"CPU: {line.split(':', 1)[1].strip()}"
    except OSError:
        pass
    return f"CPU: {platform.processor() or platform.machine()}"


def _records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise CheckpointError(f"{run_dir}: no metrics.jsonl: not a training run directory")
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _task_tables(records: list[dict]) -> list[str]:
    tasks = [r for r in records if r.get("kind") == "tasks"]
    if not tasks:
        return ["No in-loop tasks in this run (set `eval.tasks`; or `tinylm evaluate CKPT "
                "--tasks ...`)."]
    keys = [k for k in tasks[-1] if "/" in k and not k.endswith("/items")]
    last = tasks[-1]
    out = [f"Last evaluation, step {last['step']}:", "", "| score | value | items |", "|---|---|---|"]
    out += [f"| {k} | {last[k]:.4f} | {last.get(k.split('/')[0] + '/items', '')} |" for k in keys]
    out += ["", "Over steps:", "", "| step | " + " | ".join(keys) + " |",
            "|---|" + "---|" * len(keys)]
    out += [f"| {r['step']} | " + " | ".join(f"{r[k]:.4f}" if k in r else "" for k in keys) + " |"
            for r in tasks]
    in_loop = sum(r.get("tasks_s", 0.0) for r in tasks)
    return out + ["", f"In-loop task time: {in_loop:.1f} s in all."]


def _samples(run_dir: Path, max_new_tokens: int, seed: int, device) -> list[str]:
    ckpt = latest_checkpoint(run_dir / "checkpoints")
    if ckpt is None:
        return ["No checkpoint to sample from."]
    model, tokenizer, _ = load_for_inference(ckpt, device)
    texts = generate(model, tokenizer, list(PROMPTS), max_new_tokens, temperature=0.8, top_k=50,
                     seed=seed)
    out = [f"From `{ckpt.name}`, temperature 0.8, top-k 50, seed {seed}:", ""]
    for prompt, text in zip(PROMPTS, texts):
        out += ["```", prompt + text, "```"]
    return out


def write_report(run_dir: str | Path, max_new_tokens: int = 64, seed: int = 0,
                 device: str | torch.device = "cpu") -> Path:
    """Write ``<run_dir>/report.md`` (atomically) and return its path; the samples are
    generated on ``device``."""
    run_dir = Path(run_dir)
    records = _records(run_dir)
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    stamps = [r["time"] for r in records if "time" in r]
    wall = max(stamps) - min(stamps) if stamps else 0.0
    config = (run_dir / "config.yaml").read_text() if (run_dir / "config.yaml").is_file() else ""
    lines = [f"# Run report: {run_dir.name}", "",
             "| what | value |", "|---|---|",
             f"| machine | {machine()} (where this report was written) |",
             f"| torch | {torch.__version__} |",
             f"| steps | {train[-1]['step'] if train else 0} |",
             f"| tokens | {train[-1]['tokens'] if train else 0:,} |",
             f"| wall time (first to last record) | {wall:.1f} s |",
             f"| final val bits/byte | {evals[-1]['val_bits_per_byte']:.4f} (step "
             f"{evals[-1]['step']}) |" if evals else "| final val bits/byte | none |",
             f"| final val loss | {evals[-1]['val_loss']:.4f} |" if evals else "| final val loss | none |",
             "", "## Task scores", "", *_task_tables(records), "",
             "## Loss and scores over steps", "", "![loss and task scores](loss.png)", "",
             "## Sample generations", "", *_samples(run_dir, max_new_tokens, seed, device), "",
             "## Config", "", "```yaml", config.rstrip(), "```", ""]
    path = run_dir / "report.md"
    atomic_write(path, "\n".join(lines))
    return path
