"""Cross-attention fusion: the tokens of view a attend to the tokens of view b, then are pooled."""

from __future__ import annotations

import torch
from torch import nn

from crossedge.core.contracts.fusion import FusionBlock, masked_mean

from .attention import CrossAttentionLayer


class CrossAttentionFusion(FusionBlock):
    """View a queries view b (multi-head attention, residual, layer norm); a's tokens are mean-pooled."""

    name = "cross-attention"
    description = "view a attends to view b, pooled over a's tokens"

    def __init__(
        self, dim_a: int, dim_b: int, out_dim: int, width: int = 32, heads: int = 4, dropout: float = 0.0
    ) -> None:
        super().__init__(dim_a, dim_b, out_dim)
        self.attend = CrossAttentionLayer(dim_a, dim_b, width, heads, dropout)
        self.head = nn.Linear(width, out_dim)

    def attention(
        self, a: torch.Tensor, b: torch.Tensor, mask_a: torch.Tensor | None = None, mask_b: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The attention weights of a's tokens over b's, (N, heads, La, Lb)."""
        self.check_inputs(a, b, mask_a, mask_b)
        return self.attend(a, b, mask_b)[1]

    def forward(
        self,
        a: torch.Tensor,
        b: torch.Tensor,
        mask_a: torch.Tensor | None = None,
        mask_b: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Pooled a-tokens after attending to b, mapped to ``out_dim``."""
        self.check_inputs(a, b, mask_a, mask_b)
        tokens, _ = self.attend(a, b, mask_b)
        return self.head(masked_mean(tokens, mask_a))
