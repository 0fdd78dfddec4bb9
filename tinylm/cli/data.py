"""Prepare a corpus (tokenizer + token files), or train a tokenizer alone.

    tinylm prepare [CONFIG|PRESET] [data.key=value ...]
    tinylm tokenizer [CONFIG|PRESET] [data.key=value ...] [--out tokenizer.json]

The data section comes from the same config and dotted overrides as training
(data.source=corpus/ data.vocab_size=4096 data.dir=data), so ``prepare`` writes exactly what
a training run with those settings will reuse. The flags --source, --vocab-size, --dir ... are
short spellings of the same keys. ``tokenizer`` trains and saves only tokenizer.json, for
experiments with the tokenizer alone. Bad input is one ``error: ...`` line, exit status 2.
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
    p.set_defaults(tokenizer_only=name == "tokenizer")


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
    from tinylm.data.prepare import prepare

    data = prepare(cfg)
    m = data.meta
    per_token = (m["train_bytes"] + m["val_bytes"]) / max(m["train_tokens"] + m["val_tokens"], 1)
    print(f"{data.dir}: vocab {m['vocab_size']} ({m['dtype']}), "
          f"train {m['train_tokens']:,} tokens / {m['train_bytes']:,} bytes, "
          f"val {m['val_tokens']:,} tokens / {m['val_bytes']:,} bytes, {per_token:.2f} bytes/token")
    return 0


def _tokenizer(cfg, out: str) -> int:
    from tinylm.data.corpus import DataError, document_texts, load_documents
    from tinylm.data.tokenizer import Tokenizer

    rows = load_documents(cfg.source, hf_split=cfg.hf_split, hf_text_column=cfg.hf_text_column,
                          hf_config=cfg.hf_config, data_dir=cfg.dir)
    chars = [0]
    tok = Tokenizer.train(document_texts(rows, chars), cfg.vocab_size, show_progress=True)
    if chars[0] == 0:
        raise DataError(f"{cfg.source}: the corpus is empty")
    tok.save(out)
    print(f"{out}: vocab {tok.vocab_size}, eot id {tok.eot_id}")
    return 0
