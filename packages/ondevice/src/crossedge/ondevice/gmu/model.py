"""Two byte-level decoders built from the same parts: ``plain`` (every layer is full attention with its own KV
cache) and ``sambay``, a decoder-hybrid-decoder in the spirit of SambaY.

``sambay`` with L layers: the self-decoder (first L/2) alternates a gated recurrence and sliding-window
attention, ending in ONE full-attention layer whose KV cache is the only one that grows; the cross-decoder
(last L/2) alternates cross-attention over that shared KV and gated memory units (GMUs) that gate the last
recurrent layer's memory. Every layer also has a SwiGLU feed-forward block. Since the cross-decoder's layers
have fewer weights, :func:`matched_pair` widens the hybrid's feed-forward blocks until both have the same
parameter count.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from crossedge.core import CrossedgeError

from .. import model_files
from ..blocks import RMSNorm, Rotary, SwiGLU
from .cache import DecodeCache, KVState, RecurrentState, WindowState
from .layers import (
    Attention,
    CrossAttention,
    GatedMemoryUnit,
    GatedRecurrence,
    SlidingWindowAttention,
    Step,
)

VOCAB = 256  # bytes: the model reads UTF-8 and needs no tokenizer
KINDS = ("plain", "sambay")
FILE_FORMAT = "crossedge.ondevice.gmu/1"


@dataclass(frozen=True)
class DecoderConfig:
    """Shape of a decoder: ``kind`` (plain or sambay), width, depth, heads, feed-forward width, and the
    hybrid's sliding window, recurrent width and convolution length."""

    kind: str = "sambay"
    d_model: int = 128
    layers: int = 8
    heads: int = 4
    mlp_hidden: int = 352
    window: int = 64
    inner: int = 128
    kernel: int = 4
    rope_base: float = 10000.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise CrossedgeError(f"decoder kind must be one of {list(KINDS)}, got {self.kind!r}")
        if self.d_model % self.heads or (self.d_model // self.heads) % 2:
            raise CrossedgeError(f"d_model {self.d_model} must split into {self.heads} heads of even width")
        if self.kind == "sambay" and (self.layers < 4 or self.layers % 2):
            raise CrossedgeError(
                f"a sambay decoder needs an even number of layers, at least 4 (self- and cross-decoder halves, "
                f"with a recurrent layer before the shared full-attention one); got {self.layers}"
            )
        if self.layers < 1 or self.mlp_hidden < 1 or self.window < 1 or self.inner < 1 or self.kernel < 2:
            raise CrossedgeError(f"decoder sizes must be positive (kernel at least 2): {self.to_dict()}")

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (saved in model files)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DecoderConfig:
        """Inverse of :meth:`to_dict`; unknown keys are refused with the valid ones listed."""
        types = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(data) - set(types))
        if unknown:
            raise CrossedgeError(f"unknown decoder option(s) {unknown}; valid: {sorted(types)}")
        coerce = {"str": str, "int": int, "float": float}
        return cls(**{k: coerce[types[k]](v) for k, v in data.items()})

    @property
    def layer_kinds(self) -> tuple[str, ...]:
        """What each layer's token mixer is: attn, rec, swa, full (shared KV), xattn or gmu."""
        if self.kind == "plain":
            return ("attn",) * self.layers
        half = self.layers // 2
        self_decoder = tuple("rec" if i % 2 == 0 else "swa" for i in range(half - 1)) + ("full",)
        cross_decoder = tuple("xattn" if i % 2 == 0 else "gmu" for i in range(half))
        return self_decoder + cross_decoder


class Block(nn.Module):
    """Pre-norm residual layer: a token mixer, then a SwiGLU feed-forward block."""

    def __init__(self, mixer: nn.Module, dim: int, hidden: int):
        super().__init__()
        self.mixer_norm, self.mixer = RMSNorm(dim), mixer
        self.mlp_norm, self.mlp = RMSNorm(dim), SwiGLU(dim, hidden)

    def forward(self, x: torch.Tensor, state: Any, step: Step) -> torch.Tensor:
        """(B, T, dim) -> (B, T, dim)."""
        x = x + self.mixer(self.mixer_norm(x), state, step)
        return x + self.mlp(self.mlp_norm(x))


def _mixer(kind: str, c: DecoderConfig) -> nn.Module:
    if kind == "attn":
        return Attention(c.d_model, c.heads)
    if kind == "full":
        return Attention(c.d_model, c.heads, shares=True)
    if kind == "swa":
        return SlidingWindowAttention(c.d_model, c.heads, c.window)
    if kind == "rec":
        return GatedRecurrence(c.d_model, c.inner, c.kernel)
    if kind == "xattn":
        return CrossAttention(c.d_model, c.heads)
    return GatedMemoryUnit(c.d_model, c.inner)


class ByteDecoder(nn.Module):
    """A causal byte-level language model; ``forward(ids, cache)`` runs a full sequence or extends a cache."""

    def __init__(self, config: DecoderConfig | None = None):
        super().__init__()
        self.config = c = config or DecoderConfig()
        self.embed = nn.Embedding(VOCAB, c.d_model)
        self.rotary = Rotary(c.d_model // c.heads, c.rope_base)
        self.blocks = nn.ModuleList(Block(_mixer(kind, c), c.d_model, c.mlp_hidden) for kind in c.layer_kinds)
        self.norm = RMSNorm(c.d_model)
        nn.init.normal_(self.embed.weight, std=0.02)

    def forward(self, ids: torch.Tensor, cache: DecodeCache | None = None) -> torch.Tensor:
        """Logits (B, T, 256) after each byte of ``ids`` (B, T); with ``cache``, continue from its position
        and extend it (any number of new tokens per call)."""
        start = cache.length if cache is not None else 0
        positions = torch.arange(start, start + ids.shape[1])
        cos, sin = self.rotary.tables(positions)
        step = Step(start, positions, cos, sin)
        x = self.embed(ids)
        for i, block in enumerate(self.blocks):
            x = block(x, cache.layers[i] if cache is not None else None, step)
        if cache is not None:
            cache.length += ids.shape[1]
        return self.norm(x) @ self.embed.weight.T  # tied input and output embeddings

    def new_cache(self, batch: int = 1, capacity: int = 256) -> DecodeCache:
        """An empty cache; full-attention layers preallocate ``capacity`` positions (they grow past it)."""
        c = self.config
        dtype = self.embed.weight.dtype
        head_dim = c.d_model // c.heads
        layers: list = []
        for kind in c.layer_kinds:
            if kind in ("attn", "full"):
                layers.append(KVState(batch, c.heads, head_dim, capacity, dtype))
            elif kind == "swa":
                layers.append(WindowState(batch, c.heads, head_dim, c.window, dtype))
            elif kind == "rec":
                layers.append(RecurrentState(batch, c.inner, c.kernel, dtype))
            else:  # cross-attention reads the shared KV; a GMU reads the memory: neither keeps anything
                layers.append(None)
        return DecodeCache(layers, c.layer_kinds)


def parameter_count(config: DecoderConfig) -> int:
    """Parameters of a decoder of this config, counted on the meta device (no memory, no init time)."""
    with torch.device("meta"):
        model = ByteDecoder(config)
    return sum(p.numel() for p in model.parameters())


def matched_pair(plain: DecoderConfig) -> tuple[DecoderConfig, DecoderConfig]:
    """``plain`` and a sambay config of the same width and depth whose feed-forward width makes its parameter
    count the nearest to the plain one's (the count is linear in that width, so two counts solve it)."""
    plain = replace(plain, kind="plain")
    target = parameter_count(plain)
    hybrid = replace(plain, kind="sambay")
    base = parameter_count(hybrid)
    per_unit = parameter_count(replace(hybrid, mlp_hidden=hybrid.mlp_hidden + 1)) - base
    hidden = max(1, round(hybrid.mlp_hidden + (target - base) / per_unit))
    return plain, replace(hybrid, mlp_hidden=hidden)


# ---- files ------------------------------------------------------------------------------------------------------


def check_writable(path: Path | str, *, force: bool = False) -> Path:
    """``path`` if a gmu decoder may be written there: absent, one written here, or ``force``."""
    return model_files.check_writable(path, FILE_FORMAT, "a gmu decoder", force=force)


def save_decoder(
    model: ByteDecoder, path: Path | str, *, record: dict[str, Any] | None = None, force: bool = False
) -> Path:
    """Write safetensors: the weights as tensors, the config and a training record in the metadata."""
    from safetensors.torch import save_file

    path = check_writable(path, force=force)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "format": FILE_FORMAT,
        "config": json.dumps(model.config.to_dict()),
        "record": json.dumps(record or {}, default=str),
    }
    save_file(tensors, str(path), metadata=metadata)
    return path


def load_decoder(path: Path | str, config: DecoderConfig | None = None) -> tuple[ByteDecoder, dict[str, Any]]:
    """A model and its record from a file of :func:`save_decoder`; refuses other files and, given ``config``,
    a file of another shape."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CrossedgeError(f"no decoder at {path}: train one with `crossedge ondevice gmu train`")
    metadata = model_files.file_metadata(path)
    if metadata is None or metadata.get("format") != FILE_FORMAT:
        raise CrossedgeError(f"{path} is not a gmu decoder (no {FILE_FORMAT!r} metadata); train one first")
    saved = DecoderConfig.from_dict(json.loads(metadata["config"]))
    if config is not None and config != saved:
        raise CrossedgeError(f"{path} holds a decoder {saved.to_dict()}, not the requested {config.to_dict()}")
    model = ByteDecoder(saved)
    tensors = load_file(str(path))
    expected = model.state_dict()
    wrong = sorted(
        set(expected) ^ set(tensors)
        | {k for k in set(expected) & set(tensors) if expected[k].shape != tensors[k].shape}
    )
    if wrong:
        raise CrossedgeError(f"{path} does not match its own config {saved.to_dict()} (tensors {wrong[:3]}); retrain")
    model.load_state_dict(tensors)
    return model.eval(), json.loads(metadata.get("record") or "{}")
