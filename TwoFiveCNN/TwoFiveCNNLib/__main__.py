"""``python -m TwoFiveCNNLib``: the same as the ``twofivecnn`` command."""

import sys

from .cli import main

sys.exit(main())
