"""``python -m TwoFiveCNNLib``: the same as the ``twofivecnn`` command."""

import sys

from .app.cli import main

sys.exit(main())
