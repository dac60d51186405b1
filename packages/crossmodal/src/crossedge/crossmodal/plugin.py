"""The crossedge-crossmodal plugin: datasets, the ``crossedge crossmodal`` group.

Registrations are lazy ``"module:attr"`` references, so ``crossedge --help`` imports
neither torch nor numpy through this package.
"""

from __future__ import annotations

from crossedge.core import hookimpl

#: (reference, name) of every dataset instance this package registers
DATASETS: tuple[tuple[str, str], ...] = ()


@hookimpl
def register_datasets(register):
    """Register the crossmodal array datasets."""
    for reference, name in DATASETS:
        register(reference, name=name)


@hookimpl
def register_commands(cli):
    """Add the ``crossedge crossmodal`` group."""
    from .cli import group

    cli.add_command(group)
