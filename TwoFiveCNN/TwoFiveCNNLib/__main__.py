"""``python -m TwoFiveCNNLib``: the same as the ``twofivecnn`` command."""

from .app.cli import run_command

run_command()
