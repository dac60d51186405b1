"""Decode caches: a growing KV cache per full-attention layer, fixed-size states for the others.

Sizes are read from the tensors actually allocated (``numel * element_size``), never computed from the
config, so what the benchmark reports is what decoding holds in memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def _bytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


class KVState:
    """Keys and values of one full-attention layer, (B, H, capacity, dh) buffers filled up to ``length``.

    Preallocated so a decode step writes one slot instead of copying the cache; it grows (doubling) only when a
    call goes past the capacity.
    """

    grows = True

    def __init__(self, batch: int, heads: int, head_dim: int, capacity: int, dtype: torch.dtype):
        shape = (batch, heads, max(1, capacity), head_dim)
        self.key_buffer = torch.zeros(shape, dtype=dtype)
        self.value_buffer = torch.zeros(shape, dtype=dtype)
        self.length = 0

    @property
    def capacity(self) -> int:
        """Positions the buffers hold before they must grow."""
        return self.key_buffer.shape[2]

    def extend(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append (B, H, T, dh) keys and values; return views of every cached position."""
        end = self.length + keys.shape[2]
        if end > self.capacity:
            size = max(end, 2 * self.capacity)
            for name in ("key_buffer", "value_buffer"):
                old = getattr(self, name)
                new = old.new_zeros(old.shape[0], old.shape[1], size, old.shape[3])
                new[:, :, : self.length] = old[:, :, : self.length]
                setattr(self, name, new)
        self.key_buffer[:, :, self.length : end] = keys
        self.value_buffer[:, :, self.length : end] = values
        self.length = end
        return self.key_buffer[:, :, :end], self.value_buffer[:, :, :end]

    def nbytes(self) -> int:
        """Bytes allocated for keys and values."""
        return _bytes(self.key_buffer, self.value_buffer)

    def used_bytes(self) -> int:
        """Bytes of the filled positions only."""
        return self.nbytes() * self.length // self.capacity


class WindowState:
    """A sliding-window layer's ring of the last ``window`` keys and values with their positions (-1: empty)."""

    grows = False

    def __init__(self, batch: int, heads: int, head_dim: int, window: int, dtype: torch.dtype):
        self.keys = torch.zeros(batch, heads, window, head_dim, dtype=dtype)
        self.values = torch.zeros(batch, heads, window, head_dim, dtype=dtype)
        self.positions = torch.full((window,), -1, dtype=torch.long)

    def write(self, keys: torch.Tensor, values: torch.Tensor, positions: torch.Tensor) -> None:
        """Store the newest positions in their slots (position mod window); older ones fall out."""
        window = self.positions.shape[0]
        keys, values, positions = keys[:, :, -window:], values[:, :, -window:], positions[-window:]
        slots = positions % window
        self.keys[:, :, slots] = keys
        self.values[:, :, slots] = values
        self.positions[slots] = positions

    def nbytes(self) -> int:
        """Bytes allocated (fixed)."""
        return _bytes(self.keys, self.values, self.positions)

    used_bytes = nbytes


class RecurrentState:
    """A recurrent layer's hidden state (B, inner) and its convolution's last inputs (B, inner, kernel - 1)."""

    grows = False

    def __init__(self, batch: int, inner: int, kernel: int, dtype: torch.dtype):
        self.hidden = torch.zeros(batch, inner, dtype=dtype)
        self.conv = torch.zeros(batch, inner, kernel - 1, dtype=dtype)

    def update(self, hidden: torch.Tensor, conv: torch.Tensor) -> None:
        """Replace the state with the one after the latest token."""
        self.hidden = hidden.detach().clone()
        self.conv = conv.detach().clone()

    def nbytes(self) -> int:
        """Bytes allocated (fixed)."""
        return _bytes(self.hidden, self.conv)

    used_bytes = nbytes


LayerState = KVState | WindowState | RecurrentState


@dataclass
class DecodeCache:
    """Per-layer decode state of one model; ``None`` for layers that keep nothing (cross-attention, GMU)."""

    layers: list[LayerState | None]
    kinds: tuple[str, ...]
    length: int = 0

    def nbytes(self) -> dict[str, int]:
        """Allocated bytes: ``kv`` (caches that grow with the length), ``state`` (fixed-size) and ``total``."""
        kv = sum(s.nbytes() for s in self.layers if s is not None and s.grows)
        state = sum(s.nbytes() for s in self.layers if s is not None and not s.grows)
        return {"kv": kv, "state": state, "total": kv + state}

    def used_bytes(self) -> dict[str, int]:
        """Like :meth:`nbytes` counting only filled KV positions."""
        kv = sum(s.used_bytes() for s in self.layers if s is not None and s.grows)
        state = sum(s.used_bytes() for s in self.layers if s is not None and not s.grows)
        return {"kv": kv, "state": state, "total": kv + state}

    def per_layer(self) -> list[dict]:
        """One row per layer: its kind, the state it keeps and the bytes allocated."""
        return [
            {
                "layer": i,
                "kind": kind,
                "state": type(s).__name__ if s is not None else None,
                "bytes": s.nbytes() if s is not None else 0,
            }
            for i, (kind, s) in enumerate(zip(self.kinds, self.layers, strict=True))
        ]
