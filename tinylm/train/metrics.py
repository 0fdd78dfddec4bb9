"""Run metrics: one ``log(record)`` feeds the console, metrics.jsonl and the trackers.

metrics.jsonl is the source of truth (append-only, survives crashes and resumes); the console
line, the loss plot and wandb are views of it. A record is a flat dict with ``kind`` ("train"
or "eval") and ``step``.
"""

from __future__ import annotations

import io
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from tinylm.common.atomic import atomic_write
from tinylm.common.checks import POSITIVE, require


@dataclass
class LogConfig:
    interval: int = 10  # optimizer steps between console/metrics lines
    wandb: str = "offline"  # "offline" (default: never needs network), "online", "disabled"
    project: str = "tinylm"
    plot: bool = True  # write loss.png (train and val curves) at the end
    report: bool = True  # and report.md, the run's reference card (tinylm/eval/report.py)

    def __post_init__(self) -> None:
        require("log", self, {"interval": POSITIVE, "wandb": (
            lambda v: v in ("offline", "online", "disabled"), "one of offline, online, disabled")})


def format_seconds(s: float) -> str:
    s = int(max(s, 0))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _count(n: float) -> str:
    """12345 -> "12.3k": a token count for the console."""
    return next((f"{n / d:.1f}{u}" for d, u in ((1e9, "B"), (1e6, "M"), (1e3, "k")) if n >= d),
                f"{n:.0f}")


def train_line(step: int, max_steps: int, loss: float, lr: float, tok_s: float, eta_s: float,
               grad_norm: float | None = None, tflops: float | None = None,
               mfu: float | None = None, tokens_by_source: dict | None = None) -> str:
    gn = f" | gnorm {grad_norm:.2f}" if grad_norm is not None else ""
    speed = f" | {tflops:.1f} TFLOP/s" if tflops is not None else ""
    speed += f" | MFU {100 * mfu:.1f}%" if mfu is not None else ""
    mix = (" | tokens " + ", ".join(f"{k} {_count(v)}" for k, v in tokens_by_source.items())
           if tokens_by_source else "")  # a data mixture's tokens so far, per source
    return (f"step {step:>6}/{max_steps} | loss {loss:.4f} | lr {lr:.2e} | "
            f"{tok_s / 1000:.1f}k tok/s{speed}{gn}{mix} | eta {format_seconds(eta_s)}")


def eval_line(step: int, loss: float, bits_per_byte: float, tokens: int,
              by_source: dict | None = None) -> str:
    ppl = math.exp(min(loss, 700.0))
    mix = (" (" + ", ".join(f"{k} {v:.4f}" for k, v in by_source.items()) + ")"
           if by_source else "")  # a data mixture's bits per byte, per source
    return (f"eval @ step {step}: val loss {loss:.4f} | ppl {ppl:.2f} | "
            f"{bits_per_byte:.4f} bits/byte{mix} | {tokens} tokens")


def tasks_line(record: dict) -> str:
    """Downstream scores: every ``task/metric`` and ``bpb/<set>`` of a "tasks" record."""
    scores = " | ".join(f"{k} {v:.4f}" for k, v in record.items()
                        if "/" in k and not k.endswith("/items"))
    return f"tasks @ step {record['step']}: {scores} | {record['tasks_s']:.1f} s"


def score_series(records: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """``task/metric`` (and ``bpb/<set>``) -> [(step, value)] from the "tasks" records."""
    series: dict[str, list[tuple[int, float]]] = {}
    for r in records:
        if r.get("kind") == "tasks":
            for k, v in r.items():
                if "/" in k and not k.endswith("/items"):
                    series.setdefault(k, []).append((r["step"], v))
    return series


class MetricsFile:
    """Appends records to ``metrics.jsonl`` (main process only)."""

    def __init__(self, path: str | Path, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled

    def write(self, record: dict) -> None:
        """Append one record, stamped with the wall-clock time (benchmarks read time-to-loss)."""
        if self.enabled:
            record = {**record, "time": time.time()}
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")


    def truncate_after(self, step: int) -> None:
        """Drop the records a killed run logged after the checkpoint a resume starts from:
        the resumed run logs those steps again, and every step must have one value."""
        if self.path.is_file():
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= step]
            atomic_write(self.path, "".join(json.dumps(r) + "\n" for r in kept))


def read_metrics(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_losses(metrics_path: str | Path, out_png: str | Path) -> Path | None:
    """Train and val loss against step, from metrics.jsonl, and a second panel of the task
    scores when the run had in-loop tasks; None if there is nothing to plot."""
    records = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in records if r.get("kind") == "train"]
    val = [(r["step"], r["val_loss"]) for r in records if r.get("kind") == "eval"]
    if not train and not val:
        return None
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt

    series = score_series(records)
    fig, axes = plt.subplots(1, 2 if series else 1, figsize=(12 if series else 7, 4), squeeze=False)
    ax = axes[0][0]
    if series:
        _plot_scores(axes[0][1], series)
    if train:
        ax.plot(*zip(*train), label="train", linewidth=1)
    if val:
        ax.plot(*zip(*val), "o-", label="val", linewidth=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=120)
    plt.close(fig)
    atomic_write(out_png, png.getvalue())
    return Path(out_png)


def _plot_scores(ax, series: dict[str, list[tuple[int, float]]]) -> None:
    """Task accuracies (left axis); bits per byte of extra sets would share no scale with them,
    so they are drawn dashed on a right axis."""
    bpb = {k: v for k, v in series.items() if k.startswith("bpb/")}
    for k, v in series.items():
        if k not in bpb and (k.endswith("/acc") or k.endswith("/acc_norm")):
            ax.plot(*zip(*v), "o-", label=k, linewidth=1.2, markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("task score")
    ax.grid(alpha=0.3)
    if bpb:
        right = ax.twinx()
        for k, v in bpb.items():
            right.plot(*zip(*v), "s--", label=k, linewidth=1, markersize=3)
        right.set_ylabel("bits per byte")
        right.legend(fontsize=7, loc="upper right")
    ax.legend(fontsize=7, loc="upper left")


class RunLogger:
    """The one place a training run reports to: ``log(record)`` prints its console line (main
    process), appends it to metrics.jsonl and sends it to the trackers (wandb, offline by
    default, through accelerate). It also decides the cadence of train lines."""

    def __init__(self, run_dir: Path, accelerator, cfg, config_dict: dict, max_steps: int,
                 run_id: str | None, resumed_at: int = 0) -> None:
        self.accelerator, self.interval, self.max_steps = accelerator, cfg.interval, max_steps
        self.main = accelerator.is_main_process
        self.metrics = MetricsFile(Path(run_dir) / "metrics.jsonl", enabled=self.main)
        if self.main and resumed_at:
            self.metrics.truncate_after(resumed_at)
        self.run_id = run_id
        if cfg.wandb != "disabled":
            os.environ.setdefault("WANDB_SILENT", "true")
            self.run_id = run_id or f"tinylm-{int(time.time())}"
            accelerator.init_trackers(cfg.project, config=config_dict, init_kwargs={"wandb": {
                "dir": str(run_dir), "id": self.run_id, "resume": "allow", "mode": cfg.wandb}})

    def due(self, step: int) -> bool:
        return step % self.interval == 0 or step == self.max_steps

    def print(self, line: str) -> None:
        if self.main:
            print(line, flush=True)

    def log(self, record: dict) -> None:
        step = record["step"]
        if record["kind"] == "tasks":
            self.print(tasks_line(record))
        elif record["kind"] == "eval":
            mix = {k.removeprefix("val_bits_per_byte_"): v for k, v in record.items()
                   if k.startswith("val_bits_per_byte_")}
            self.print(eval_line(step, record["val_loss"], record["val_bits_per_byte"],
                                 record["val_tokens"], mix))
        else:
            self.print(train_line(step, self.max_steps, record["loss"], record["lr"],
                                  record["tokens_per_s"], record["eta_s"], record["grad_norm"],
                                  record.get("tflops"), record.get("mfu"),
                                  record.get("tokens_by_source")))
        self.metrics.write(record)
        self.accelerator.log({k: v for k, v in record.items() if k not in ("kind", "step")},
                             step=step)
