"""Train a tinylm GPT (accelerate launch scripts/train.py [CONFIG|PRESET] [key=value ...]).

A thin shell over `tinylm train` (tinylm/cli/); `python scripts/train.py --help` for usage.
"""

import sys

from tinylm.cli import main as tinylm


def main(argv: list[str]) -> int:
    return tinylm(["train", *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
