"""``python -m slimdump``."""

import sys

from slimdump.cli import main

sys.exit(main())
