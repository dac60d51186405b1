"""Fusion blocks (Two Views, One Truth): concat, cross-attention, mutual cross-attention and gated fusion.

Each block is a :class:`crossedge.core.contracts.fusion.FusionBlock` in its own module,
registered lazily by :mod:`crossedge.crossmodal.plugin`; build one from a spec with
:func:`crossedge.core.contracts.fusion.build_fusion`.
"""
