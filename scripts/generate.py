"""Generate text from a tinylm checkpoint, streamed as it is sampled.

A thin shell over `tinylm generate` (tinylm/cli/); `python scripts/generate.py --help` for usage.
"""

import sys

from tinylm.cli import main as tinylm


def main(argv: list[str]) -> int:
    return tinylm(["generate", *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
