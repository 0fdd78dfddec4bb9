"""Make a smaller student checkpoint from a teacher's blocks (see tinylm/student.py).

    python scripts/make_student.py TEACHER --layers every:2 --out DIR [--n-embd N]

TEACHER is a checkpoint directory, or a run directory (its newest checkpoint). --layers is
every:K, first:K, last:K or a list like 0,2,4,7. --n-embd narrows the student too (whole heads;
a multiple of the teacher's head_dim). DIR must not exist or be empty; it becomes a normal
checkpoint (model.safetensors, config.json, tokenizer.json) that scripts/evaluate.py and
scripts/generate.py read as is, and that a training run starts from with
checkpoint.init_from=DIR. Its config keeps the teacher's training config with the student's
model section, and the teacher's validation split, so evaluate needs no --data.
Prints the copy report. Errors: one line "error: ..." on stderr, exit status 2.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from tinylm.checkpoint import TOKENIZER_FILE, CheckpointError, find_checkpoints, load_model
from tinylm.checkpoint import write_checkpoint_files
from tinylm.model import GPT
from tinylm.student import make_student
from tinylm.cli import ArgumentParser
from tinylm.weights import CopyReport


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__.split("\n")[0], usage=__doc__.split("\n\n")[1].strip())
    p.add_argument("teacher", metavar="TEACHER")
    p.add_argument("--layers", required=True, help="every:K, first:K, last:K or 0,2,4,7")
    p.add_argument("--out", required=True, type=Path, metavar="DIR")
    p.add_argument("--n-embd", type=int, default=None, help="a narrower width (whole heads)")
    return p.parse_args(argv)


def write_student(teacher_path: str | Path, layers: str, out: Path,
                  n_embd: int | None = None) -> tuple[GPT, GPT, CopyReport]:
    """Build the student of ``teacher_path`` and write it to ``out`` (atomically: assembled
    under a temporary name, then renamed). Returns (teacher, student, copy report)."""
    ckpt = find_checkpoints(teacher_path)[-1]
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out {out}: exists and is not an empty directory")
    teacher, cfg = load_model(ckpt)
    student, report = make_student(teacher, layers, n_embd)
    train_config = {**cfg.get("train", {}), "model": student.config.to_dict()}
    extra = {k: cfg[k] for k in ("data_dir", "val_tokens", "val_bytes") if k in cfg}
    extra["step"] = 0  # no training step taken as this model
    extra["student_of"] = {"teacher": str(ckpt), "layers": layers,
                           "teacher_layers": [int(c.source.split(".")[1]) for c in report.copied
                                              if c.source.endswith(".input_layernorm.weight")],
                           "n_embd": student.config.n_embd}
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write_checkpoint_files(tmp, student, train_config, ckpt / TOKENIZER_FILE, extra=extra)
        if out.exists():
            out.rmdir()  # empty, checked above
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return teacher, student, report


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        teacher, student, report = write_student(args.teacher, args.layers, args.out, args.n_embd)
    except (CheckpointError, ValueError, OSError) as e:
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
    print(report)
    print(f"wrote {args.out}: {student.num_params() / 1e6:.3f}M parameters "
          f"({student.config.n_layer} layers, n_embd {student.config.n_embd}) from a "
          f"{teacher.num_params() / 1e6:.3f}M-parameter teacher")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
