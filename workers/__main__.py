"""``python -m workers``: the same as the ``splatpack`` command."""

import sys

from workers.cli import main

sys.exit(main())
