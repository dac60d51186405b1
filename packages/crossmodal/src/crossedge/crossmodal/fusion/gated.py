"""Gated fusion: a learned, per-feature gate mixes the two pooled, projected views."""

from __future__ import annotations

import torch
from torch import nn

from crossedge.core.contracts.fusion import FusionBlock, FusionError, masked_mean


class GatedFusion(FusionBlock):
    """``g * ha + (1 - g) * hb`` of the projected pooled views, ``g = sigmoid(W [ha; hb])``, then a linear head."""

    name = "gated"
    description = "learned gate mixing the two pooled views"

    def __init__(self, dim_a: int, dim_b: int, out_dim: int, width: int = 32) -> None:
        super().__init__(dim_a, dim_b, out_dim)
        if width < 1:
            raise FusionError(f"fusion block 'gated': width must be positive, got {width}")
        self.project_a = nn.Sequential(nn.Linear(dim_a, width), nn.Tanh())
        self.project_b = nn.Sequential(nn.Linear(dim_b, width), nn.Tanh())
        self.gate = nn.Linear(2 * width, width)
        self.head = nn.Linear(width, out_dim)

    def gate_values(
        self, a: torch.Tensor, b: torch.Tensor, mask_a: torch.Tensor | None = None, mask_b: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The gate (N, width) in [0, 1]: 1 takes view a, 0 takes view b."""
        self.check_inputs(a, b, mask_a, mask_b)
        ha, hb = self.project_a(masked_mean(a, mask_a)), self.project_b(masked_mean(b, mask_b))
        return torch.sigmoid(self.gate(torch.cat([ha, hb], dim=-1)))

    def forward(
        self,
        a: torch.Tensor,
        b: torch.Tensor,
        mask_a: torch.Tensor | None = None,
        mask_b: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The gated mixture of the projected views, mapped to ``out_dim``."""
        self.check_inputs(a, b, mask_a, mask_b)
        ha, hb = self.project_a(masked_mean(a, mask_a)), self.project_b(masked_mean(b, mask_b))
        g = torch.sigmoid(self.gate(torch.cat([ha, hb], dim=-1)))
        return self.head(g * ha + (1.0 - g) * hb)
