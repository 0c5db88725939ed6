"""JSON hot-folder pipeline: small programs that talk only through one job table."""

import os

__version__ = "0.3.0"       # the one place; setup.cfg reads it, CHANGELOG.md says what each release brought

# Set by the ``hotfolder`` console command for itself and the programs it starts, so that help,
# sidecars and alerts name the command the operator actually runs.
COMMAND_STYLE = "PIPELINE_COMMAND_STYLE"


def command(name: str) -> str:
    """How an operator runs the command ``name`` here: ``hotfolder name`` for an installed
    pipeline, ``bin/name`` in a checkout of the repository."""
    return f"hotfolder {name}" if os.environ.get(COMMAND_STYLE) == "hotfolder" else f"bin/{name}"
