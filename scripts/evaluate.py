"""Evaluate tinylm checkpoints: loss, perplexity and bits per byte.

A thin shell over `tinylm evaluate` (tinylm/cli/); `python scripts/evaluate.py --help` for usage.
"""

import sys

from tinylm.cli import main as tinylm


def main(argv: list[str]) -> int:
    return tinylm(["evaluate", *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
