"""The crossedge-crossmodal plugin: datasets, fusion blocks, the ``crossedge crossmodal`` group.

Registrations are lazy ``"module:attr"`` references, so ``crossedge --help`` imports
neither torch nor numpy through this package.
"""

from __future__ import annotations

from crossedge.core import hookimpl

#: (reference, name) of every dataset instance this package registers
DATASETS: tuple[tuple[str, str], ...] = (
    ("crossedge.crossmodal.datasets.neuro:SCP1", "scp1"),
    ("crossedge.crossmodal.datasets.neuro:SCP2", "scp2"),
    ("crossedge.crossmodal.datasets.neuro:FINGER_MOVEMENTS", "finger-movements"),
    ("crossedge.crossmodal.datasets.neuro:EYES_OPEN_SHUT", "eyes-open-shut"),
    ("crossedge.crossmodal.datasets.neuro:HAND_MOVEMENT_DIRECTION", "hand-movement-direction"),
)


@hookimpl
def register_datasets(register):
    """Register the crossmodal array datasets."""
    for reference, name in DATASETS:
        register(reference, name=name)


#: (reference, name) of every fusion block class this package registers
FUSION_BLOCKS: tuple[tuple[str, str], ...] = (
    ("crossedge.crossmodal.fusion.concat:ConcatFusion", "concat"),
    ("crossedge.crossmodal.fusion.cross_attention:CrossAttentionFusion", "cross-attention"),
    ("crossedge.crossmodal.fusion.mutual:MutualCrossAttentionFusion", "mutual"),
    ("crossedge.crossmodal.fusion.gated:GatedFusion", "gated"),
)


@hookimpl
def register_fusion_blocks(register):
    """Register the fusion blocks (classes, built per use from a spec)."""
    for reference, name in FUSION_BLOCKS:
        register(reference, name=name)


@hookimpl
def register_commands(cli):
    """Add the ``crossedge crossmodal`` group."""
    from .cli import group

    cli.add_command(group)
