"""python -m tinylm.cli ...: the tinylm command without the console script."""

import sys

from tinylm.cli import main

sys.exit(main())
