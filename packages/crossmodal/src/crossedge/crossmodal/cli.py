"""``crossedge crossmodal ...`` commands."""

from __future__ import annotations

import click


@click.group(name="crossmodal")
def group() -> None:
    """Cross-subject decoding, contrastive alignment, fusion blocks, Zipper and attention audits."""
