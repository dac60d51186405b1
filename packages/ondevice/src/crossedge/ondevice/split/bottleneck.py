"""The quantized bottleneck and its wire format: b-bit codes, bit-packed, behind a 6-byte header.

A payload is what the device sends for one image::

    byte 0      width index (which slimmable setting encoded it)
    byte 1      bits per code (1-8)
    bytes 2-5   scale, little-endian float32 (value = code * scale)
    bytes 6-    channels * height * width codes of ``bits`` bits each, most significant bit
                first, packed back to back and zero-padded to a whole byte

so it holds ``HEADER_BYTES + ceil(channels * height * width * bits / 8)`` bytes
(:func:`payload_size`). The scale is per image: the largest bottleneck value maps to the
largest code, so no calibration is shipped and the server needs nothing but the bytes.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np
import torch

from crossedge.core import CrossedgeError

_HEADER = struct.Struct("<BBf")
#: Bytes in front of the codes: width index, bits, float32 scale.
HEADER_BYTES = _HEADER.size
#: The smallest scale written, so an all-zero bottleneck still decodes to zeros.
MIN_SCALE = 1e-8


def payload_size(channels: int, height: int, width: int, bits: int) -> int:
    """Bytes of one payload: the header plus ``channels * height * width`` codes of ``bits`` bits."""
    _check_bits(bits)
    return HEADER_BYTES + math.ceil(channels * height * width * bits / 8)


def _check_bits(bits: int) -> None:
    if not 1 <= int(bits) <= 8:
        raise CrossedgeError(f"bits per code must be 1 to 8, got {bits}")


def quantize(features: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image codes (uint8, same shape) and scales (float32, one per image) of non-negative features."""
    _check_bits(bits)
    levels = (1 << bits) - 1
    flat = features.detach().float().flatten(1)
    scale = (flat.amax(dim=1) / levels).clamp_min(MIN_SCALE)
    codes = torch.round(features.detach().float() / scale.view(-1, *([1] * (features.dim() - 1))))
    return codes.clamp_(0, levels).to(torch.uint8), scale


def dequantize(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Float32 values ``code * scale``; the server computes exactly this from the bytes."""
    return codes.float() * scale.float().view(-1, *([1] * (codes.dim() - 1)))


def fake_quantize(features: torch.Tensor, bits: int) -> torch.Tensor:
    """Quantize then dequantize; gradients pass straight through (identity) while training."""
    codes, scale = quantize(features, bits)
    rounded = dequantize(codes, scale)
    if features.requires_grad and torch.is_grad_enabled():
        # The straight-through estimator: the forward value is the rounded one, the backward is identity.
        return features + (rounded - features).detach()
    # Returned as is so the device's values and the server's (decoded from bytes) are bit-identical.
    return rounded


def pack_codes(codes: np.ndarray, bits: int) -> bytes:
    """The low ``bits`` bits of each uint8 code, most significant first, back to back."""
    _check_bits(bits)
    flat = np.ascontiguousarray(codes, dtype=np.uint8).reshape(-1)
    if flat.size and int(flat.max()) >= 1 << bits:
        raise CrossedgeError(f"a code of {int(flat.max())} does not fit in {bits} bits")
    planes = np.unpackbits(flat[:, None], axis=1)[:, 8 - bits :]
    return np.packbits(planes.reshape(-1)).tobytes()


def unpack_codes(data: bytes, count: int, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_codes`: ``count`` uint8 codes."""
    _check_bits(bits)
    needed = math.ceil(count * bits / 8)
    if len(data) != needed:
        raise CrossedgeError(f"{count} codes of {bits} bits need {needed} bytes, got {len(data)}")
    planes = np.unpackbits(np.frombuffer(data, dtype=np.uint8))[: count * bits].reshape(count, bits)
    full = np.zeros((count, 8), dtype=np.uint8)
    full[:, 8 - bits :] = planes
    return np.packbits(full, axis=1).reshape(count)


@dataclass
class Payload:
    """One image's bottleneck as the server receives it."""

    width_index: int
    bits: int
    scale: float
    codes: np.ndarray  # (channels, height, width) uint8

    def to_bytes(self) -> bytes:
        """The serialized payload (header then packed codes)."""
        return _HEADER.pack(self.width_index, self.bits, self.scale) + pack_codes(self.codes, self.bits)

    @classmethod
    def from_bytes(cls, data: bytes, shape_of: dict[int, tuple[int, int, int]]) -> Payload:
        """Parse a payload; ``shape_of`` maps each valid width index to its (channels, height, width)."""
        if len(data) < HEADER_BYTES:
            raise CrossedgeError(f"a payload has at least {HEADER_BYTES} header bytes, got {len(data)}")
        width_index, bits, scale = _HEADER.unpack_from(data)
        if width_index not in shape_of:
            raise CrossedgeError(f"payload names width index {width_index}; this model has {sorted(shape_of)}")
        shape = shape_of[width_index]
        codes = unpack_codes(data[HEADER_BYTES:], math.prod(shape), bits).reshape(shape)
        return cls(width_index, bits, scale, codes)

    def values(self) -> torch.Tensor:
        """The dequantized bottleneck, (1, channels, height, width) float32."""
        scale = torch.tensor([self.scale], dtype=torch.float32)
        return dequantize(torch.from_numpy(self.codes.copy()).unsqueeze(0), scale)
