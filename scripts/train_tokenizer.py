"""Train a byte-level BPE tokenizer on a source and save only its tokenizer.json.

    python scripts/train_tokenizer.py --source python-docs --vocab-size 8192 --out tokenizer.json

For experiments with the tokenizer alone (vocabulary size vs bytes per token); training runs
use ``scripts/prepare_data.py`` / ``tinylm.data.prepare``, which train their own. Bad input
prints one ``error: ...`` line and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys

from tinylm.corpus import DataError, document_texts, load_documents
from tinylm.tokenizer import Tokenizer

# DataConfig's defaults, spelled out: importing tinylm.data would import torch, which costs
# seconds and is not needed to train a tokenizer (a test checks these match DataConfig)
DEFAULTS = {"source": "python-docs", "vocab_size": 8192, "dir": "data", "hf_split": "train",
            "hf_config": None, "hf_text_column": "text"}


def build_parser() -> argparse.ArgumentParser:
    d = DEFAULTS
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", default=d["source"])
    p.add_argument("--vocab-size", type=int, default=d["vocab_size"])
    p.add_argument("--out", default="tokenizer.json", help="where tokenizer.json goes")
    p.add_argument("--data-dir", default=d["dir"], help="where python-docs is built and cached")
    p.add_argument("--hf-split", default=d["hf_split"])
    p.add_argument("--hf-config", default=d["hf_config"])
    p.add_argument("--hf-text-column", default=d["hf_text_column"])
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        rows = load_documents(a.source, hf_split=a.hf_split, hf_text_column=a.hf_text_column,
                              hf_config=a.hf_config, data_dir=a.data_dir)
        chars = [0]
        tok = Tokenizer.train(document_texts(rows, chars), a.vocab_size, show_progress=True)
        if chars[0] == 0:
            raise DataError(f"{a.source}: the corpus is empty")
        tok.save(a.out)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{a.out}: vocab {tok.vocab_size}, eot id {tok.eot_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
