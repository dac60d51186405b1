"""The crossedge-serve plugin: registers the ``crossedge serve`` command.

The command module imports click alone; fastapi, uvicorn and torch are imported when the
command runs, so ``crossedge --help`` stays fast.
"""

from __future__ import annotations

from crossedge.core import hookimpl


@hookimpl
def register_commands(cli):
    """Add ``crossedge serve``."""
    from .cli import serve

    cli.add_command(serve)
