"""What every tinylm script shares on the command line: bad usage is one line, exit 2."""

from __future__ import annotations

import argparse
import sys


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error prints ``error: ... (see --help)`` and exits 2, like every
    other bad input in tinylm (argparse's default prints the whole usage block first)."""

    def error(self, message: str) -> None:
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)
