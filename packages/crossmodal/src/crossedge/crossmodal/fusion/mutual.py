"""Mutual cross-attention fusion: a attends to b and b attends to a; the two pooled results are combined."""

from __future__ import annotations

import torch
from torch import nn

from crossedge.core.contracts.fusion import FusionBlock, masked_mean

from .attention import CrossAttentionLayer


class MutualCrossAttentionFusion(FusionBlock):
    """Two cross-attention directions (a over b, b over a), each pooled, concatenated and mapped by a linear head."""

    name = "mutual"
    description = "mutual cross-attention both ways, pooled and combined"

    def __init__(
        self, dim_a: int, dim_b: int, out_dim: int, width: int = 32, heads: int = 4, dropout: float = 0.0
    ) -> None:
        super().__init__(dim_a, dim_b, out_dim)
        self.a_over_b = CrossAttentionLayer(dim_a, dim_b, width, heads, dropout)
        self.b_over_a = CrossAttentionLayer(dim_b, dim_a, width, heads, dropout)
        self.head = nn.Sequential(nn.Linear(2 * width, width), nn.GELU(), nn.Linear(width, out_dim))

    def directions(
        self, a: torch.Tensor, b: torch.Tensor, mask_a: torch.Tensor | None = None, mask_b: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(a attending to b, b attending to a)``, each pooled over its query tokens: two (N, width) tensors."""
        self.check_inputs(a, b, mask_a, mask_b)
        a_tokens, _ = self.a_over_b(a, b, mask_b)
        b_tokens, _ = self.b_over_a(b, a, mask_a)
        return masked_mean(a_tokens, mask_a), masked_mean(b_tokens, mask_b)

    def forward(
        self,
        a: torch.Tensor,
        b: torch.Tensor,
        mask_a: torch.Tensor | None = None,
        mask_b: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Both pooled directions concatenated and mapped to ``out_dim``."""
        return self.head(torch.cat(self.directions(a, b, mask_a, mask_b), dim=-1))
