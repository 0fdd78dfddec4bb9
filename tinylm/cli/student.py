"""Make a smaller student checkpoint from a teacher's blocks (see tinylm/convert/student.py).

    tinylm student TEACHER --layers every:2 --out DIR [--n-embd N]

TEACHER is a checkpoint directory, or a run directory (its newest checkpoint). --layers is
every:K, first:K, last:K or a list like 0,2,4,7. --n-embd narrows the student too (whole heads;
a multiple of the teacher's head_dim). DIR must not exist or be empty; it becomes a normal
checkpoint that evaluate and generate read as is, and that a training run starts from with
checkpoint.init_from=DIR. Prints the copy report.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser, name: str) -> None:
    p.add_argument("teacher", metavar="TEACHER")
    p.add_argument("--layers", required=True, help="every:K, first:K, last:K or 0,2,4,7")
    p.add_argument("--out", required=True, type=Path, metavar="DIR")
    p.add_argument("--n-embd", type=int, default=None, help="a narrower width (whole heads)")


def run(args: argparse.Namespace) -> int:
    from tinylm.convert.student import write_student

    teacher, student, report = write_student(args.teacher, args.layers, args.out, args.n_embd)
    print(report)
    print(f"wrote {args.out}: {student.num_params() / 1e6:.3f}M parameters "
          f"({student.config.n_layer} layers, n_embd {student.config.n_embd}) from a "
          f"{teacher.num_params() / 1e6:.3f}M-parameter teacher")
    return 0
