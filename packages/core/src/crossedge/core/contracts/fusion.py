"""The fusion-block contract: two views as token sequences in, one pooled representation out.

A fusion block is a ``torch.nn.Module`` built with the widths of its two inputs and of its
output, ``Block(dim_a, dim_b, out_dim, **options)``, where the options are keyword arguments
with type hints and defaults, so that a spec (``cross-attention:heads=4,dropout=0.1``,
docs/specs.md) sets them through :func:`crossedge.core.specs.build` (:func:`build_fusion`).

``forward(a, b, mask_a=None, mask_b=None)`` takes ``a`` of shape (N, La, dim_a) and ``b`` of
shape (N, Lb, dim_b) and returns (N, out_dim). A mask is a boolean tensor (N, L) that is True
at the tokens to use (padding is False); a block ignores masked tokens when it pools or
attends, and every row keeps at least one token. Rows of a batch never mix: row i of the
output depends only on row i of the inputs.

Register the class (not an instance) through ``register_fusion_blocks``. This module imports
torch, so a plugin registers its blocks as lazy ``"module:Class"`` references; the checks
against widths live in :meth:`FusionBlock.check_inputs` so every block refuses the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch

from ..errors import CrossedgeError

if TYPE_CHECKING:
    from ..specs import Spec


class FusionError(CrossedgeError, ValueError):
    """A fusion block was given inputs of the wrong shape or width, or bad options."""


class FusionBlock(torch.nn.Module):
    """Base class of fusion blocks: ``forward(a, b, mask_a=None, mask_b=None)`` -> (N, out_dim)."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    def __init__(self, dim_a: int, dim_b: int, out_dim: int) -> None:
        super().__init__()
        for label, value in (("dim_a", dim_a), ("dim_b", dim_b), ("out_dim", out_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise FusionError(f"fusion block {self.name!r}: {label} must be a positive integer, got {value!r}")
        self.dim_a = dim_a
        self.dim_b = dim_b
        self.out_dim = out_dim

    def check_inputs(
        self,
        a: torch.Tensor,
        b: torch.Tensor,
        mask_a: torch.Tensor | None = None,
        mask_b: torch.Tensor | None = None,
    ) -> None:
        """Refuse inputs whose rank, batch size, width or mask shape does not fit, in one line."""
        for label, x, dim in (("a", a, self.dim_a), ("b", b, self.dim_b)):
            if x.ndim != 3:
                raise FusionError(
                    f"fusion block {self.name!r}: view {label} has shape {tuple(x.shape)}; "
                    f"pass a token sequence (N, L, {dim})"
                )
            if x.shape[-1] != dim:
                raise FusionError(
                    f"fusion block {self.name!r}: view {label} has width {x.shape[-1]} but the block was "
                    f"built with dim_{label}={dim}; build it with dim_{label}={x.shape[-1]} or project the view"
                )
            if x.shape[1] < 1:
                raise FusionError(f"fusion block {self.name!r}: view {label} has no tokens; pass at least one")
        if a.shape[0] != b.shape[0]:
            raise FusionError(
                f"fusion block {self.name!r}: view a has {a.shape[0]} rows and view b {b.shape[0]}; "
                f"pass the same examples in both views"
            )
        for label, mask, x in (("mask_a", mask_a, a), ("mask_b", mask_b, b)):
            if mask is None:
                continue
            if tuple(mask.shape) != tuple(x.shape[:2]) or mask.dtype != torch.bool:
                raise FusionError(
                    f"fusion block {self.name!r}: {label} is {mask.dtype} {tuple(mask.shape)}; "
                    f"pass a boolean mask of shape {tuple(x.shape[:2])}"
                )
            if not bool(mask.any(dim=1).all()):
                raise FusionError(f"fusion block {self.name!r}: {label} hides every token of a row; keep at least one")

    def forward(
        self,
        a: torch.Tensor,
        b: torch.Tensor,
        mask_a: torch.Tensor | None = None,
        mask_b: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Fuse ``a`` (N, La, dim_a) and ``b`` (N, Lb, dim_b) into (N, out_dim)."""
        raise NotImplementedError(f"{type(self).__name__} must implement forward(a, b, mask_a, mask_b)")


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over the tokens of ``x`` (N, L, D) that ``mask`` (N, L) keeps; all tokens when it is None."""
    if mask is None:
        return x.mean(dim=1)
    weights = mask.to(x.dtype).unsqueeze(-1)
    return (x * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


def is_fusion_class(obj: Any) -> bool:
    """True when ``obj`` is a subclass of :class:`FusionBlock`."""
    return isinstance(obj, type) and issubclass(obj, FusionBlock)


def build_fusion(spec: str | Spec, dim_a: int, dim_b: int, out_dim: int) -> FusionBlock:
    """The fusion block a spec names (``gated:hidden=64``), looked up in the ``fusion`` registry and built."""
    from ..registry import get_registry
    from ..specs import build, parse_spec

    parsed = parse_spec(spec, kind="fusion block")
    registry = get_registry("fusion")
    factory = registry.get(parsed.name)
    if not is_fusion_class(factory):
        raise FusionError(
            f"fusion block {parsed.name!r} is {factory!r}, not a subclass of "
            f"crossedge.core.contracts.fusion.FusionBlock: the plugin must subclass it and register the class"
        )
    return build(parsed, factory, kind="fusion block", dim_a=dim_a, dim_b=dim_b, out_dim=out_dim)
