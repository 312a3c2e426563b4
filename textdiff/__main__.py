"""``python -m textdiff``: the ``textdiff`` command."""

import sys

from textdiff.infra.cli import main

sys.exit(main())
