"""The ``tinylm`` command: one front door for every job.

    tinylm train [CONFIG|PRESET] [key=value ...]      (also: accelerate launch scripts/train.py)
    tinylm prepare [CONFIG|PRESET] [data.key=value ...]
    tinylm tokenizer [CONFIG|PRESET] [data.key=value ...] [--out tokenizer.json]
    tinylm evaluate CKPT [CKPT ...] [--data SOURCE] [--json OUT] [--tasks T,.. | --harness T,..]
    tinylm generate CKPT --prompt TEXT [...]
    tinylm student TEACHER --layers every:2 --out DIR [--n-embd N]
    tinylm convert to-hf CKPT OUT | from-hf HF_DIR OUT
    tinylm pack CKPT OUT [--bits 8|6]                 (tinylm evaluate OUT scores the file)
    tinylm verify CKPT|RUN_DIR [...]                  every file against its manifest
    tinylm report RUN_DIR                             (report.md: the run's reference card)

Every subcommand parses the same way (argparse, a usage error is one line and exit 2) and
every error goes through one map (:data:`ERRORS`): bad input is one ``error: ...`` line and
exit 2; a run that had to stop to protect its state (divergence, a broken tie) is exit 1.
``scripts/*.py`` are thin shells over these subcommands. Each subcommand imports the parts
it runs inside ``run`` (torch, datasets...), so ``tinylm --help`` answers at once.

May import: common, sharing, model, data, distributed, checkpoint, eval, infer, convert, train
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# name -> module in tinylm.cli that has add_arguments(parser) and run(args) -> int
COMMANDS = {
    "train": "train", "prepare": "data", "tokenizer": "data", "evaluate": "evaluate",
    "generate": "generate", "student": "student", "convert": "convert", "pack": "pack",
    "verify": "verify", "report": "report",
}


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error prints ``error: ... (see --help)`` and exits 2, like every
    other bad input in tinylm (argparse's default prints the whole usage block first)."""

    def error(self, message: str) -> None:
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def _errors() -> list[tuple[tuple[type, ...], int, bool, bool]]:
    """(exception types, exit status, whether the line names the type, whether every rank of a
    multi-process run raises it alike: from the same inputs, or agreed by a collective)."""
    from tinylm.checkpoint.format import CheckpointError
    from tinylm.data.corpus import DataError
    from tinylm.data.tokenizer import TokenizerMismatchError
    from tinylm.distributed.parallel import ParallelError
    from tinylm.distributed.sync_check import TiedSyncError
    from tinylm.distributed.timeout import RankTimeout
    from tinylm.sharing.tying import TieError
    from tinylm.train.config import ConfigError
    from tinylm.train.rundir import RunDirError
    from tinylm.train.step import TrainingDiverged

    return [((TrainingDiverged, TiedSyncError, TieError), 1, True, True),
            ((RankTimeout,), 1, True, False),
            ((ConfigError, DataError, CheckpointError, TokenizerMismatchError, RunDirError),
             2, False, True),
            ((ParallelError, ValueError, OSError), 2, False, False)]


def error_exit(e: BaseException, show: bool = True) -> int | None:
    """The exit status for ``e`` (after printing its one line), or None if it is a bug. In a
    multi-process run an error every rank raises alike is printed once, by rank 0; any other
    names the rank that raised it."""
    rank = int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 0
    for types, status, named, agreed in _errors():
        if isinstance(e, types):
            if show and not (rank and agreed):
                text = str(e).splitlines()[0] if str(e) else type(e).__name__
                where = f"rank {rank}: " if rank else ""
                print(f"error: {where}{type(e).__name__ + ': ' if named else ''}{text}", file=sys.stderr)
            return status
    return None


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="tinylm", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND",
                           parser_class=ArgumentParser)
    for name, module in COMMANDS.items():
        mod = importlib.import_module(f"tinylm.cli.{module}")
        doc = (mod.__doc__ or "").strip()
        sp = sub.add_parser(name, help=doc.split("\n")[0], description=doc,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(sp, name)
        sp.set_defaults(run=mod.run)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run a subcommand; returns the exit status (errors mapped by :data:`ERRORS`)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # no fork warnings from workers
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        status = args.run(args)
    except Exception as e:  # noqa: BLE001 - mapped to one line, or re-raised as a bug
        status = error_exit(e, show=not getattr(args, "quiet_errors", False))
        if status is None:
            raise
    if getattr(args, "exit_rank", False):
        from tinylm.train.rundir import exit_rank

        exit_rank(status)  # returns only in a single-process run
    return status
