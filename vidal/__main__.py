"""``python -m vidal``: the same as the ``vidal`` console command."""

import sys

from vidal.cli import main

sys.exit(main())
