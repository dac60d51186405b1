"""The layers of both decoders: rotary attention (full, sliding-window, cross), a gated linear recurrence, the
gated memory unit (GMU); RMSNorm, rotary tables and SwiGLU come from :mod:`crossedge.ondevice.blocks`.

Every token mixer takes ``(x, state, step)``: ``state`` is its own entry of a :class:`~.cache.DecodeCache` (or
``None`` for a stateless full-sequence forward), and ``step`` carries what this forward shares between layers:
the positions, the rotary tables, the shared KV of the self-decoder's full-attention layer and the memory of
its last recurrent layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..blocks import rotate
from .cache import KVState, RecurrentState, WindowState


@dataclass
class Step:
    """What one forward call shares across layers: where its tokens sit and what earlier layers left."""

    start: int  # position of the first token of this call (tokens already in the cache)
    positions: torch.Tensor  # (T,) absolute positions
    cos: torch.Tensor  # (T, head_dim / 2)
    sin: torch.Tensor
    shared: tuple[torch.Tensor, torch.Tensor] | None = None  # (K, V) of the full-attention layer, (B, H, S, dh)
    memory: torch.Tensor | None = None  # (B, T, inner): the last recurrent layer's token-mixer output

    def causal_mask(self, keys: int) -> torch.Tensor | None:
        """Boolean mask (T, keys) letting query i see key positions <= start + i; ``None`` for one query."""
        if len(self.positions) == 1:
            return None  # a single new token sees every cached key
        return torch.arange(keys)[None, :] <= self.positions[:, None]


class _Heads(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads or (dim // heads) % 2:
            raise ValueError(f"d_model {dim} must split into {heads} heads of even width")
        self.heads, self.head_dim = heads, dim // heads

    def split(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.heads, self.head_dim).transpose(1, 2)

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        b, _, t, _ = x.shape
        return x.transpose(1, 2).reshape(b, t, self.heads * self.head_dim)


def _causal_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, step: Step) -> torch.Tensor:
    """Queries at ``step.positions`` over keys at positions 0, 1, ...: torch's causal kernel when both start at
    0 (no (T, T) mask is built, which matters for long prefills), an explicit mask otherwise."""
    if step.start == 0:
        return F.scaled_dot_product_attention(q, keys, values, is_causal=True)
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=step.causal_mask(keys.shape[2]))


class Attention(_Heads):
    """Causal full attention whose keys and values go into its own growing KV cache. With ``shares=True`` it is
    the self-decoder's last layer and hands its (K, V) to the cross-decoder through ``step.shared``."""

    def __init__(self, dim: int, heads: int, *, shares: bool = False):
        super().__init__(dim, heads)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        self.shares = shares

    def forward(self, x: torch.Tensor, state: KVState | None, step: Step) -> torch.Tensor:
        """Attend over every earlier position (cached ones included)."""
        q, k, v = (self.split(t) for t in self.qkv(x).chunk(3, dim=-1))
        q, k = rotate(q, step.cos, step.sin), rotate(k, step.cos, step.sin)
        keys, values = (k, v) if state is None else state.extend(k, v)
        out = _causal_attention(q, keys, values, step)
        if self.shares:
            step.shared = (keys, values)
        return self.out(self.merge(out))


class CrossAttention(_Heads):
    """A cross-decoder layer: queries from its own input, keys and values read from the shared KV cache. It has
    no key or value projection and no cache entry of its own."""

    def __init__(self, dim: int, heads: int):
        super().__init__(dim, heads)
        self.query = nn.Linear(dim, dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, state: None, step: Step) -> torch.Tensor:
        """Attend over the shared (K, V) up to each query's position."""
        if step.shared is None:
            raise RuntimeError("cross-attention needs the self-decoder's shared KV; the layer order is wrong")
        keys, values = step.shared
        q = rotate(self.split(self.query(x)), step.cos, step.sin)
        return self.out(self.merge(_causal_attention(q, keys, values, step)))


class SlidingWindowAttention(_Heads):
    """Causal attention over the last ``window`` positions only; its cache is a fixed-size ring of keys."""

    def __init__(self, dim: int, heads: int, window: int):
        super().__init__(dim, heads)
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        self.window = window
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, state: WindowState | None, step: Step) -> torch.Tensor:
        """Attend over positions p with 0 <= query - p < window."""
        q, k, v = (self.split(t) for t in self.qkv(x).chunk(3, dim=-1))
        q, k = rotate(q, step.cos, step.sin), rotate(k, step.cos, step.sin)
        if state is None:
            keys, values, key_positions = k, v, step.positions
        else:
            keys = torch.cat([state.keys, k], dim=2)
            values = torch.cat([state.values, v], dim=2)
            key_positions = torch.cat([state.positions, step.positions])
            state.write(k, v, step.positions)
        distance = step.positions[:, None] - key_positions[None, :]
        visible = (distance >= 0) & (distance < self.window) & (key_positions[None, :] >= 0)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=visible)
        return self.out(self.merge(out))


def linear_scan(log_decay: torch.Tensor, inputs: torch.Tensor, initial: torch.Tensor, chunk: int = 32) -> torch.Tensor:
    """h_t = exp(log_decay_t) * h_{t-1} + inputs_t over (B, T, D), from ``initial`` (B, D); returns every h_t.

    Chunked: inside a chunk the recurrence is a masked (T, T) decay matrix per channel (exponents of differences
    of cumulative log decays, all <= 0, so nothing overflows); chunks hand their last state to the next.
    """
    outputs = []
    state = initial
    for begin in range(0, inputs.shape[1], chunk):
        decay = log_decay[:, begin : begin + chunk]
        values = inputs[:, begin : begin + chunk]
        total = decay.cumsum(dim=1)  # (B, C, D)
        size = total.shape[1]
        lower = torch.ones(size, size, dtype=torch.bool).tril()
        channels_first = total.transpose(1, 2)  # (B, D, C): one contiguous (C, C) matrix per channel for matmul
        difference = channels_first[:, :, :, None] - channels_first[:, :, None, :]
        weights = difference.masked_fill(~lower, -math.inf).exp()
        mixed = (weights @ values.transpose(1, 2)[..., None]).squeeze(-1).transpose(1, 2)
        hidden = mixed + total.exp() * state[:, None, :]
        outputs.append(hidden)
        state = hidden[:, -1]
    return torch.cat(outputs, dim=1)


class GatedRecurrence(nn.Module):
    """A small selective linear recurrence (Mamba-like in spirit): a causal depthwise convolution, an
    input-dependent per-channel decay, and an output gate. Its state is fixed in size whatever the length.

    The gated output ``o_t = h_t * silu(z_t)`` before the output projection is this layer's memory: the last
    recurrent layer of the self-decoder leaves it in ``step.memory`` for the cross-decoder's GMUs.
    """

    def __init__(self, dim: int, inner: int, kernel: int = 4):
        super().__init__()
        self.inner, self.kernel = inner, kernel
        self.in_proj = nn.Linear(dim, 2 * inner, bias=False)
        self.conv = nn.Conv1d(inner, inner, kernel, groups=inner)
        self.decay = nn.Linear(inner, inner)
        self.out = nn.Linear(inner, dim, bias=False)
        # channels start with retention between 0.6 and 0.995 per step: a spread of time scales
        with torch.no_grad():
            keep = torch.linspace(0.6, 0.995, inner)
            self.decay.bias.copy_(torch.log(keep / (1 - keep)))
            self.decay.weight.mul_(0.1)

    def forward(self, x: torch.Tensor, state: RecurrentState | None, step: Step) -> torch.Tensor:
        """(B, T, dim) -> (B, T, dim); sets ``step.memory`` to the gated inner output."""
        u, z = self.in_proj(x).chunk(2, dim=-1)
        u = u.transpose(1, 2)  # (B, inner, T) for the convolution
        history = u.new_zeros(u.shape[0], self.inner, self.kernel - 1) if state is None else state.conv
        padded = torch.cat([history, u], dim=2)
        u = F.silu(F.conv1d(padded, self.conv.weight, self.conv.bias, groups=self.inner)).transpose(1, 2)
        logits = self.decay(u)
        log_keep, write = F.logsigmoid(logits), torch.sigmoid(-logits) * u
        initial = state.hidden if state is not None else u.new_zeros(u.shape[0], self.inner)
        if u.shape[1] == 1:  # one decode step: the recurrence itself, no scan machinery
            hidden = (log_keep.exp() * initial[:, None, :] + write).contiguous()
        else:
            hidden = linear_scan(log_keep, write, initial)
        if state is not None:
            state.update(hidden[:, -1], padded[:, :, -(self.kernel - 1) :])
        memory = hidden * F.silu(z)
        step.memory = memory
        return self.out(memory)


class GatedMemoryUnit(nn.Module):
    """The GMU: ``y = W_out(memory * silu(W_in x))``. The layer's own input gates, element-wise, the memory an
    earlier layer computed for the same token, so the layer mixes tokens without any cache of its own."""

    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.gate = nn.Linear(dim, inner, bias=False)
        self.out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, state: None, step: Step) -> torch.Tensor:
        """(B, T, dim) and ``step.memory`` (B, T, inner) -> (B, T, dim)."""
        if step.memory is None:
            raise RuntimeError("a GMU needs an earlier recurrent layer's memory; the layer order is wrong")
        return self.out(step.memory * F.silu(self.gate(x)))
