"""Prepare a corpus: tokenizer.json, train-NNNNN.bin shards and manifest.json.

A thin shell over `tinylm prepare` (tinylm/cli/); `python scripts/prepare_data.py --help` for usage.
"""

import sys

from tinylm.cli import main as tinylm


def main(argv: list[str]) -> int:
    return tinylm(["prepare", *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
