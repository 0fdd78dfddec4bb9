"""Train a GPT: CONFIG is a YAML file or a preset name (default, tiny, fast-cpu, ...).

    tinylm train [CONFIG|PRESET] [dotted.key=value ...]
    accelerate launch [accelerate flags] scripts/train.py [CONFIG|PRESET] [key=value ...]

Overrides use dotted keys (model.n_layer=6 run_dir=runs/x checkpoint.resume=auto). Exit status
0 when done, 128+N when stopped by signal N (after saving a checkpoint), 2 for bad input, 1
when the run stopped to protect its state (non-finite loss, tied parameters out of sync).
"""

from __future__ import annotations

import argparse
import signal


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config_and_overrides", nargs="*", metavar="[CONFIG] key=value",
                   help="a YAML file or preset name, then dotted overrides")


def split_config(items: list[str]) -> tuple[str | None, list[str]]:
    """The optional CONFIG before the key=value overrides."""
    if items and "=" not in items[0]:
        return items[0], items[1:]
    return None, items


def add_arguments(p: argparse.ArgumentParser, name: str) -> None:
    add_config_arguments(p)
    p.set_defaults(exit_rank=True)  # several ranks: end without finalization (train/rundir.py)


def run(args: argparse.Namespace) -> int:
    from tinylm.train.rundir import bind_to_launcher  # first: before the seconds torch takes

    bind_to_launcher()
    from tinylm.train.config import load_config
    from tinylm.train.trainer import train

    summary = train(load_config(*split_config(args.config_and_overrides)))
    if summary["stopped_by"]:
        return 128 + signal.Signals[summary["stopped_by"]].value
    return 0
