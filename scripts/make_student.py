"""Make a smaller student checkpoint from a teacher's blocks.

A thin shell over `tinylm student` (tinylm/cli/); `python scripts/make_student.py --help` for usage.
"""

import sys

from tinylm.cli import main as tinylm


def main(argv: list[str]) -> int:
    return tinylm(["student", *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
