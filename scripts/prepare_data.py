"""Prepare a corpus for training: tokenizer.json, train.bin, val.bin and meta.json.

    python scripts/prepare_data.py                      # python-docs, offline, into data/
    python scripts/prepare_data.py --source corpus/ --vocab-size 4096
    python scripts/prepare_data.py --source roneneldan/TinyStories --hf-split train

Training calls the same ``tinylm.data.prepare``, so running this first is optional; it is
the way to prepare once on a login node, or to see sizes before a run. A second run with the
same settings reuses the prepared directory. Bad input (a missing file, text that is not UTF-8,
an empty corpus) prints one ``error: ...`` line and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys

from tinylm.data import DataConfig, DataError, prepare


def build_parser() -> argparse.ArgumentParser:
    d = DataConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", default=d.source, help="python-docs, a file, folder, glob, "
                   "save_to_disk folder, parquet/jsonl files or a Hub dataset name")
    p.add_argument("--val-source", default=d.val_source, help="separate validation source")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction,
                   help="tail of the token stream kept for validation (without --val-source)")
    p.add_argument("--vocab-size", type=int, default=d.vocab_size)
    p.add_argument("--dir", "--out-dir", dest="out_dir", default=d.dir,
                   help="root of prepared outputs (data.dir)")
    p.add_argument("--hf-split", default=d.hf_split)
    p.add_argument("--hf-config", default=d.hf_config)
    p.add_argument("--hf-text-column", default=d.hf_text_column)
    return p


def config_from_args(argv: list[str] | None = None) -> DataConfig:
    a = build_parser().parse_args(argv)
    return DataConfig(source=a.source, val_source=a.val_source, val_fraction=a.val_fraction,
                      vocab_size=a.vocab_size, dir=a.out_dir, hf_split=a.hf_split,
                      hf_config=a.hf_config, hf_text_column=a.hf_text_column)


def main(argv: list[str] | None = None) -> int:
    try:
        data = prepare(config_from_args(argv))
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    m = data.meta
    per_token = (m["train_bytes"] + m["val_bytes"]) / max(m["train_tokens"] + m["val_tokens"], 1)
    print(f"{data.dir}: vocab {m['vocab_size']} ({m['dtype']}), "
          f"train {m['train_tokens']:,} tokens / {m['train_bytes']:,} bytes, "
          f"val {m['val_tokens']:,} tokens / {m['val_bytes']:,} bytes, {per_token:.2f} bytes/token")
    return 0


if __name__ == "__main__":
    sys.exit(main())
