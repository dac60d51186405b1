"""The cross-attention layer shared by the attention-based fusion blocks: queries from one view, keys from the other."""

from __future__ import annotations

import math

import torch
from torch import nn

from crossedge.core.contracts.fusion import FusionError


class CrossAttentionLayer(nn.Module):
    """Multi-head attention of ``query`` tokens over ``key`` tokens, with a residual and layer norm.

    Written out (instead of ``nn.MultiheadAttention``) so that the attention weights are
    returned exactly as used, masked keys get a weight of exactly zero, and no fast path
    changes the numbers between train and eval mode.
    """

    def __init__(self, query_dim: int, key_dim: int, width: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if heads < 1 or width % heads:
            raise FusionError(
                f"attention width {width} does not split into {heads} heads; pick width divisible by heads"
            )
        self.heads = heads
        self.width = width
        self.query_in = nn.Linear(query_dim, width)
        self.key_value_in = nn.Linear(key_dim, 2 * width)
        self.out = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, key_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tokens (N, Lq, width), weights (N, heads, Lq, Lk))`` for ``query`` (N, Lq, .) attending to ``key``."""
        n, lq, _ = query.shape
        lk = key.shape[1]
        x = self.query_in(query)
        q = x.view(n, lq, self.heads, -1).transpose(1, 2)
        k, v = self.key_value_in(key).view(n, lk, 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        if key_mask is not None:
            scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
        weights = scores.softmax(dim=-1)
        attended = (self.dropout(weights) @ v).transpose(1, 2).reshape(n, lq, self.width)
        return self.norm(x + self.dropout(self.out(attended))), weights
