"""Prepare a corpus (tokenizer + token files), or train a tokenizer alone.

    tinylm prepare [CONFIG|PRESET] [data.key=value ...]
    tinylm prepare ... --executor local|slurm|ray [--tasks N] [--workers N]
    tinylm tokenizer [CONFIG|PRESET] [data.key=value ...] [--out tokenizer.json]

The data section comes from the same config and dotted overrides as training
(data.source=corpus/ data.vocab_size=4096 data.dir=data), so ``prepare`` writes exactly what
a training run with those settings will reuse. The flags --source, --vocab-size, --dir ... are
short spellings of the same keys. ``tokenizer`` trains and saves only tokenizer.json, for
experiments with the tokenizer alone. ``--executor`` runs the same units as a datatrove
pipeline (tinylm.data.cluster; ``pip install 'tinylm[cluster]'``): ``local`` on this machine's
CPUs, ``slurm`` as an array job whose last job seals the store (the command returns once it is
submitted; rerun it to resume), ``ray`` on the cluster in RAY_ADDRESS. Bad input is one
``error: ...`` line, exit status 2.
"""

from __future__ import annotations

import argparse

from tinylm.cli.train import add_config_arguments, split_config

# short flags for data.* keys (the old scripts' spellings)
FLAGS = {"--source": "source", "--val-source": "val_source", "--val-fraction": "val_fraction",
         "--vocab-size": "vocab_size", "--dir": "dir", "--out-dir": "dir", "--data-dir": "dir",
         "--hf-split": "hf_split", "--hf-config": "hf_config", "--hf-text-column": "hf_text_column"}


def add_arguments(p: argparse.ArgumentParser, name: str) -> None:
    add_config_arguments(p)
    for flag, key in FLAGS.items():
        p.add_argument(flag, dest=f"flag_{flag[2:].replace('-', '_')}", metavar=key.upper(),
                       help=f"data.{key}")
    if name == "tokenizer":
        p.add_argument("--out", default="tokenizer.json", help="where tokenizer.json goes")
    else:
        add_executor_arguments(p)
    p.set_defaults(tokenizer_only=name == "tokenizer")


def add_executor_arguments(p: argparse.ArgumentParser) -> None:
    """datatrove's executors (parsed without importing datatrove: --help stays instant)."""
    g = p.add_argument_group("datatrove (default: tinylm's own process pool)")
    g.add_argument("--executor", choices=("local", "slurm", "ray"),
                   help="run the units as a datatrove pipeline on this executor")
    g.add_argument("--tasks", type=int, help="datatrove tasks (default: one per unit)")
    g.add_argument("--workers", type=int, help="tasks at once (default: local CPUs / no limit)")
    g.add_argument("--logging-dir", help="datatrove's logs and completions; a relaunch with the "
                   "same one resumes (default: <store>/datatrove)")
    g.add_argument("--slurm-partition", help="slurm: partition (required with slurm)")
    g.add_argument("--slurm-time", help="slurm: time limit per task, e.g. 2:00:00 (required)")
    g.add_argument("--slurm-cpus", type=int, default=1, help="slurm: CPUs per task (default 1)")


def _run_units(args: argparse.Namespace):
    """prepare's ``run_units`` for ``--executor`` (None: tinylm's own pool)."""
    from tinylm.train.config import ConfigError

    given = [f for f in ("tasks", "workers", "logging_dir", "slurm_partition", "slurm_time")
             if getattr(args, f) is not None]
    if not args.executor:
        if given:
            raise ConfigError(f"--{given[0].replace('_', '-')} needs --executor (tinylm's own "
                              "pool takes data.workers=N)")
        return None
    if any(getattr(args, f) is not None and getattr(args, f) < 1 for f in ("tasks", "workers")):
        raise ConfigError("--tasks and --workers: expected >= 1")
    from tinylm.data.cluster import run_units_with

    slurm = {"partition": args.slurm_partition, "time": args.slurm_time,
             "cpus_per_task": args.slurm_cpus}
    return run_units_with(args.executor, tasks=args.tasks, workers=args.workers,
                          logging_dir=args.logging_dir,
                          slurm={k: v for k, v in slurm.items() if v is not None})


def data_config(args: argparse.Namespace):
    """The DataConfig the config, the data.* overrides and the flags give."""
    from tinylm.train.config import ConfigError, load_config

    config, overrides = split_config(args.config_and_overrides)
    for ov in overrides:
        if not ov.startswith("data."):
            raise ConfigError(f"override '{ov}': only data.* keys apply here")
    flags = [f"data.{key}={value}" for flag, key in FLAGS.items()
             if (value := getattr(args, f"flag_{flag[2:].replace('-', '_')}")) is not None]
    return load_config(config, overrides + flags).data


def run(args: argparse.Namespace) -> int:
    cfg = data_config(args)
    if args.tokenizer_only:
        return _tokenizer(cfg, args.out)
    if cfg.mixture:  # each source's store, one tokenizer (each prints its summary line)
        from tinylm.data.mixture import prepare_mixture

        if args.executor:
            raise ValueError("--executor prepares one source: run it per source of data.mixture")
        mixed = prepare_mixture(cfg)
        print(f"mixture of {len(mixed.parts)} sources, fingerprint {mixed.fingerprint}")
        return 0
    from tinylm.data.prepare import prepare

    data = prepare(cfg, run_units=_run_units(args))
    if data is None:  # submitted to slurm: its last job seals the store
        print("submitted; the seal job writes manifest.json when every unit is done (rerun "
              "the same command to resume: finished units and tasks are kept)")
        return 0
    return 0  # prepare printed its summary line


def _tokenizer(cfg, out: str) -> int:
    """The BPE ``prepare`` would train: on the same bounded sample of the same units."""
    from tinylm.data.plan import plan, train_tokenizer

    tok = train_tokenizer(cfg, plan(cfg)["train"], progress=True)
    tok.save(out)
    print(f"{out}: vocab {tok.vocab_size}, eot id {tok.eot_id}")
    return 0
