"""Student from a teacher vs from scratch, with and without distillation, same steps.

    python benchmarks/distill_experiment.py TEACHER_CKPT [--layers every:2] [--steps 300]

TEACHER_CKPT is a checkpoint (or run dir) trained with configs/default.yaml on python-docs,
e.g. the one `accelerate launch scripts/train.py` writes to runs/default. The student has the
layers chosen by --layers; four runs of configs/default.yaml with the student's depth train
for --steps steps each and are scored on the whole val split:

    scratch            random init, cross-entropy only
    scratch + KD       random init, distillation (alpha 0.5, T 2)
    from teacher       initialised with make_student (embedding/head, norm, chosen blocks)
    from teacher + KD  both

Prints a markdown table of final val bits per byte (and the teacher's own, for reference).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def final_bpb(run_dir: Path) -> float:
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["kind"] == "eval"][-1]["val_bits_per_byte"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("teacher")
    p.add_argument("--layers", default="every:2")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--temperature", type=float, default=2.0)
    args = p.parse_args()

    from tinylm.checkpoint.format import find_checkpoints, load_model, write_checkpoint
    from tinylm.convert.student import make_student
    from tinylm.eval.loss import evaluate_checkpoint

    teacher_ckpt = find_checkpoints(args.teacher)[-1]
    teacher, cfg = load_model(teacher_ckpt)
    student, _ = make_student(teacher, args.layers)
    work = Path(tempfile.mkdtemp(prefix="distill-"))
    init = work / "student-init"
    init.mkdir()
    write_checkpoint(init, student, cfg["train"], teacher_ckpt / "tokenizer.json")
    base = [f"model.n_layer={student.config.n_layer}", f"optim.max_steps={args.steps}",
            f"optim.warmup_steps={max(args.steps // 10, 1)}", "eval.interval=0",
            "checkpoint.interval=0", "log.wandb=disabled", "log.plot=false"]
    kd = [f"distill.teacher={teacher_ckpt}", f"distill.alpha={args.alpha}",
          f"distill.temperature={args.temperature}"]
    runs = {"scratch": [], "scratch + KD": kd, "from teacher": [f"checkpoint.init_from={init}"],
            "from teacher + KD": [f"checkpoint.init_from={init}", *kd]}
    rows = []
    for name, extra in runs.items():
        run_dir = work / name.replace(" ", "_").replace("+", "kd")
        t0 = time.time()
        proc = subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"), "configs/default.yaml",
                               f"run_dir={run_dir}", *base, *extra], cwd=REPO, capture_output=True,
                              text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        if proc.returncode != 0:
            raise SystemExit(f"{name} failed:\n{proc.stderr[-2000:]}")
        rows.append((name, final_bpb(run_dir), time.time() - t0))
        print(f"[{name}] {rows[-1][1]:.4f} bits/byte in {rows[-1][2]:.0f} s", flush=True)
    teacher_bpb = evaluate_checkpoint(teacher_ckpt)["bits_per_byte"]
    print(f"\nteacher {teacher_ckpt} ({teacher.config.n_layer} layers): {teacher_bpb:.4f} bits/byte; "
          f"student {student.config.n_layer} layers ({args.layers}), {args.steps} steps, "
          f"KD alpha {args.alpha} T {args.temperature}\n")
    print("| student | val bits/byte | wall s |\n|---|---|---|")
    for name, bpb, wall in rows:
        print(f"| {name} | {bpb:.4f} | {wall:.0f} |")


if __name__ == "__main__":
    main()
