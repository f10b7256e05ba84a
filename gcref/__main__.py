"""``python -m gcref`` runs the ``gcref`` command line."""

import sys

from gcref.cli import main

sys.exit(main())
