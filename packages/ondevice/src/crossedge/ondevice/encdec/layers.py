"""The students' attention: self-attention (bidirectional or causal, with a preallocated KV buffer) and
cross-attention whose keys and values over the encoder output are computed once (RMSNorm, rotary tables and
SwiGLU come from :mod:`crossedge.ondevice.blocks`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..blocks import rotate


class KVBuffer:
    """Keys and values of one causal self-attention layer, preallocated so a decode step copies one position
    instead of the whole cache (a growing ``torch.cat`` would make each step cost grow with the context)."""

    def __init__(self, batch: int, heads: int, head_dim: int, capacity: int, dtype: torch.dtype):
        self.keys = torch.empty(batch, heads, max(1, capacity), head_dim, dtype=dtype)
        self.values = torch.empty_like(self.keys)
        self.length = 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k``, ``v`` (B, H, T, dh) after what is held (doubling the buffers when full); all keys, values."""
        end = self.length + k.shape[2]
        if end > self.keys.shape[2]:
            grown = max(end, 2 * self.keys.shape[2])
            for name in ("keys", "values"):
                old = getattr(self, name)
                new = old.new_empty(old.shape[0], old.shape[1], grown, old.shape[3])
                new[:, :, : self.length] = old[:, :, : self.length]
                setattr(self, name, new)
        self.keys[:, :, self.length : end] = k
        self.values[:, :, self.length : end] = v
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]

    def nbytes(self) -> int:
        """Bytes of the positions held (keys and values)."""
        return 2 * self.length * self.keys[:, :, :1].numel() * self.keys.element_size()


class SelfAttention(nn.Module):
    """Multi-head self-attention with rotary positions; ``causal`` picks decoder (True) or encoder (False)."""

    def __init__(self, dim: int, heads: int, *, causal: bool):
        super().__init__()
        self.heads, self.causal = heads, causal
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVBuffer | None = None
    ) -> torch.Tensor:
        """(B, T, dim) -> (B, T, dim); with ``cache`` (causal only) the new tokens follow the cached ones."""
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        start = 0
        if cache is not None:
            start = cache.length
            k, v = cache.append(k, v)
        if not self.causal or t == 1:
            mask, is_causal = None, False  # one new token may see every cached key
        elif start == 0:
            mask, is_causal = None, True
        else:  # a chunk after cached tokens: query i sees keys up to start + i
            mask, is_causal = torch.arange(k.shape[2])[None, :] <= torch.arange(start, start + t)[:, None], False
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class CrossAttention(nn.Module):
    """Decoder queries over the encoder output; no positions (the encoder already placed its tokens)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)

    def memory_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values (B, H, N, dh) of the encoder output (B, N, dim): computed once per input."""
        b, n, d = memory.shape
        k, v = self.kv(memory).view(b, n, 2, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return k, v

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """(B, T, dim) queries attending to the precomputed ``kv`` -> (B, T, dim)."""
        b, t, d = x.shape
        q = self.query(x).view(b, t, self.heads, d // self.heads).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, kv[0], kv[1])
        return self.out(y.transpose(1, 2).reshape(b, t, d))
