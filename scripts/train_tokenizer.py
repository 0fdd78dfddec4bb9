"""Train a byte-level BPE tokenizer and save only its tokenizer.json.

A thin shell over `tinylm tokenizer` (tinylm/cli/); `python scripts/train_tokenizer.py --help` for usage.
"""

import sys

from tinylm.cli import main as tinylm


def main(argv: list[str]) -> int:
    return tinylm(["tokenizer", *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
