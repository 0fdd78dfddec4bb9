"""Evaluate a checkpoint under `accelerate launch` (tests/eval/test_loss.py starts it on 2 ranks).

    eval_2proc.py CKPT JSON_OUT [--batch-size N] [--data SOURCE]

Each rank prints "RESULT <json>": its rank, the world size it got (the test asserts 2: on CPU
several launch forms silently start one process) and what ``evaluate_checkpoint`` returned.
Then scripts/evaluate.py's own ``main`` runs in the same processes with ``--json JSON_OUT``, so
the test also sees that under accelerate only the main process prints the table and writes.
"""

import argparse
import json
import os
import runpy
import sys
from pathlib import Path

import torch
from accelerate import Accelerator

from tinylm.eval.loss import evaluate_checkpoint

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "evaluate.py"


def report(result: dict) -> None:
    """One os.write per line: ranks share stdout, and print()'s separate writes interleave;
    a single write under 4 KB to a pipe is atomic."""
    sys.stdout.flush()
    os.write(1, ("RESULT " + json.dumps(result) + "\n").encode())


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("ckpt")
    p.add_argument("json_out")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--data", default=None)
    args = p.parse_args()
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    result = evaluate_checkpoint(args.ckpt, args.data, batch_size=args.batch_size,
                                 accelerator=accelerator)
    report({"rank": accelerator.process_index, "world_size": accelerator.num_processes, **result})
    script_argv = [args.ckpt, "--json", args.json_out, "--batch-size", str(args.batch_size)]
    if args.data:
        script_argv += ["--data", args.data]
    return runpy.run_path(str(SCRIPT), run_name="evaluate_script")["main"](script_argv)


if __name__ == "__main__":
    sys.exit(main())
