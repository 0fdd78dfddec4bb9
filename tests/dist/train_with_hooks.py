"""Run the real training loop under `accelerate launch`, with a fault or a stop injected.

    train_with_hooks.py [--fault-rank R --fault-step N [--fault-kind K]] [--stop-step N]
                        CONFIG [key=value ...]

--fault-*: after the gradients are reduced at step N, rank R perturbs its tied gradient (its
shard of it, under FSDP2) by a tiny amount (K=perturb), as a rank-local bug would, or drops
it (K=drop: its rows would never be updated, pytorch #176076); the sync check must catch it.
K=hang: rank R sleeps there for 10 minutes, as a hung rank would (parallel.timeout_s must
name it); K=nan: rank R's tied weight turns NaN just before step N, on that rank only (every
rank must stop before step N's update); K=kill: rank R SIGKILLs itself after step N, in
the launch's first attempt only (TORCHELASTIC_RESTART_COUNT=0: a restarted group trains on).
--stop-step: every rank sends itself SIGTERM after step N (a preemption).
Prints "RESULT <json>" on each rank: the summary, or the error's type and message.
"""

import argparse
import json
import os
import signal
import sys
import time

import torch

from tinylm.train.config import load_config
from tinylm.train.rundir import exit_rank
from tinylm.train.state import TrainHooks
from tinylm.train.trainer import train


def report(result: dict) -> None:
    """One os.write per line: ranks share stdout, and print()'s separate writes interleave;
    a single write under 4 KB to a pipe is atomic."""
    sys.stdout.flush()
    os.write(1, ("RESULT " + json.dumps(result) + "\n").encode())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--fault-rank", type=int, default=-1)
    p.add_argument("--fault-step", type=int, default=-1)
    p.add_argument("--fault-kind", choices=["perturb", "drop", "hang", "nan", "kill"], default="perturb")
    p.add_argument("--stop-step", type=int, default=-1)
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    rank = int(os.environ.get("RANK", "0"))

    def after_backward(model, step):
        if rank == args.fault_rank and step == args.fault_step:
            weight = (model.module if hasattr(model, "module") else model).embed_tokens.weight
            if args.fault_kind == "hang":
                time.sleep(600)
                return
            if args.fault_kind in ("nan", "kill"):
                return  # poisoned in after_step, before this step's forward
            if args.fault_kind == "drop":
                weight.grad = None
                return
            grad = weight.grad.to_local() if hasattr(weight.grad, "to_local") else weight.grad
            with torch.no_grad():
                grad[0, 0] += 1e-6

    def after_step(model, step):  # step: the steps done, so step N comes next
        if rank == args.fault_rank and step == args.fault_step and args.fault_kind == "nan":
            with torch.no_grad():
                (model.module if hasattr(model, "module") else model).embed_tokens.weight.fill_(float("nan"))
        first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
        if rank == args.fault_rank and step == args.fault_step and args.fault_kind == "kill" \
                and first_attempt:
            os.kill(os.getpid(), signal.SIGKILL)
        if step == args.stop_step:
            os.kill(os.getpid(), signal.SIGTERM)

    try:
        summary = train(load_config(args.config, args.overrides),
                        TrainHooks(after_backward=after_backward, after_step=after_step))
        report({"rank": rank, "ok": True, **summary})
        exit_rank(0)  # as `tinylm train` ends a rank (train/rundir.py says why)
    except Exception as e:  # report, don't crash: the test reads each rank's outcome
        report({"rank": rank, "ok": False, "error": type(e).__name__,
                                      "message": str(e)})
        exit_rank(3)
        sys.exit(3)


if __name__ == "__main__":
    main()
