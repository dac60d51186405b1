"""``crossedge sensing ...`` commands: datasets, bench, sweep and collect."""

from __future__ import annotations

import click


@click.group(name="sensing")
def group() -> None:
    """Wi-Fi CSI and motion recognition under domain shift: datasets, scenarios, sweeps."""
