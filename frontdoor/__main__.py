"""``python -m frontdoor``: the same as the ``splatpack`` command."""

import sys

from frontdoor.cli import main

sys.exit(main())
