"""Check checkpoints against their manifests: every file there, of its size, with its digest.

    tinylm verify CKPT|RUN_DIR [...]

One line per checkpoint: ``ok``, ``FAILED`` with the first file that does not match (and how
many more), or ``unverified`` for a checkpoint without a manifest (tinylm 0.1). Exit status 0
when every checkpoint verifies, 1 when one fails, 2 when a path is no checkpoint or run
directory. A packed artifact (tinylm pack) checks its own sha256 header.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser, name: str) -> None:
    p.add_argument("checkpoints", nargs="+", metavar="CKPT", help="checkpoint dirs, run dirs or artifacts")


def run(args: argparse.Namespace) -> int:
    from tinylm.checkpoint.artifact import read_artifact
    from tinylm.checkpoint.format import CheckpointError, find_checkpoints, is_artifact
    from tinylm.checkpoint.manifest import problems

    failed = False
    for ckpt in [c for arg in args.checkpoints for c in find_checkpoints(arg)]:
        if is_artifact(ckpt):
            try:
                read_artifact(ckpt)
                found = []
            except CheckpointError as e:
                found = [str(e)]
        else:
            found = problems(ckpt)
        if found is None:
            print(f"unverified  {ckpt}: no manifest (a checkpoint of tinylm 0.1)")
        elif found:
            failed = True
            more = f" (+{len(found) - 1} more)" if len(found) > 1 else ""
            print(f"FAILED      {ckpt}: {found[0]}{more}")
        else:
            print(f"ok          {ckpt}")
    return 1 if failed else 0
