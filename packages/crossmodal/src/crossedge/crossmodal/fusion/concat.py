"""Concatenation fusion: pool each view over its tokens, concatenate, and map through an MLP."""

from __future__ import annotations

import torch
from torch import nn

from crossedge.core.contracts.fusion import FusionBlock, FusionError, masked_mean


class ConcatFusion(FusionBlock):
    """Mean-pool both views, concatenate the two vectors and apply a two-layer MLP."""

    name = "concat"
    description = "pool each view, concatenate, MLP"

    def __init__(self, dim_a: int, dim_b: int, out_dim: int, hidden: int = 64, dropout: float = 0.0) -> None:
        super().__init__(dim_a, dim_b, out_dim)
        if hidden < 1:
            raise FusionError(f"fusion block 'concat': hidden must be positive, got {hidden}")
        self.mlp = nn.Sequential(
            nn.Linear(dim_a + dim_b, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, out_dim)
        )

    def forward(
        self,
        a: torch.Tensor,
        b: torch.Tensor,
        mask_a: torch.Tensor | None = None,
        mask_b: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """MLP of the concatenated mean-pooled views."""
        self.check_inputs(a, b, mask_a, mask_b)
        return self.mlp(torch.cat([masked_mean(a, mask_a), masked_mean(b, mask_b)], dim=-1))
