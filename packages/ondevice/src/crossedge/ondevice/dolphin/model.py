"""The Dolphin reader: a frozen decoder's embeddings and first layers encode a long context, a compressor pools
every ``ratio`` tokens into one memory embedding and projects it into the decoder's input-embedding space.

Only the compressor (attention pooling plus an MLP projector) is trained; the decoder, including the layers the
encoder borrows, stays frozen, as in the paper's first stage. The decoder then reads ``ceil(L / ratio)`` memory
positions in place of ``L`` context tokens.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from crossedge.core import CrossedgeError

from .. import model_files

FILE_FORMAT = "crossedge.ondevice.dolphin/1"
WHAT = "a dolphin memory compressor"
TRAIN_COMMAND = "crossedge ondevice dolphin train"


@dataclass(frozen=True)
class DolphinConfig:
    """Shape of the compressor, and the decoder it was built for (its width, depth and vocabulary)."""

    hidden_size: int
    decoder_layers: int
    vocab_size: int
    encoder_layers: int = 0
    ratio: int = 16
    pool_heads: int = 4
    projector_hidden: int = 1152
    decoder: str = "smollm2-135m"

    def __post_init__(self) -> None:
        if self.ratio < 1:
            raise CrossedgeError(f"compression ratio must be at least 1, got {self.ratio}")
        if not 0 <= self.encoder_layers <= self.decoder_layers:
            raise CrossedgeError(
                f"encoder layers must be between 0 and the decoder's {self.decoder_layers}, got {self.encoder_layers}"
            )
        if self.pool_heads < 1 or self.hidden_size % self.pool_heads:
            raise CrossedgeError(f"pool heads must divide the decoder width {self.hidden_size}, got {self.pool_heads}")
        if self.projector_hidden < 1:
            raise CrossedgeError(f"projector hidden width must be positive, got {self.projector_hidden}")

    def memory_length(self, context_tokens: int) -> int:
        """Memory embeddings for a context of ``context_tokens`` tokens: one per started chunk of ``ratio``."""
        return math.ceil(context_tokens / self.ratio)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (what the model file stores)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DolphinConfig:
        """Inverse of :meth:`to_dict`; unknown keys are refused with the valid ones listed."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CrossedgeError(f"unknown dolphin option(s) {unknown}; valid: {sorted(known)}")
        return cls(**data)

    @classmethod
    def for_decoder(cls, decoder: nn.Module, name: str, **options: Any) -> DolphinConfig:
        """A config whose width, depth and vocabulary are read from ``decoder``'s own config."""
        c = decoder.config
        return cls(
            hidden_size=int(c.hidden_size),
            decoder_layers=int(c.num_hidden_layers),
            vocab_size=int(c.vocab_size),
            decoder=name,
            **options,
        )


def check_decoder(config: DolphinConfig, decoder: nn.Module) -> None:
    """Refuse a decoder whose width, depth or vocabulary is not the one the compressor was built for."""
    c = decoder.config
    found = (int(c.hidden_size), int(c.num_hidden_layers), int(c.vocab_size))
    wanted = (config.hidden_size, config.decoder_layers, config.vocab_size)
    if found != wanted:
        raise CrossedgeError(
            f"the compressor was trained for {config.decoder!r} (width, layers, vocabulary {wanted}), not a decoder "
            f"with {found}; pass that decoder or train a compressor for this one"
        )


def embedding_rms(decoder: nn.Module) -> float:
    """Root mean square of the decoder's token-embedding entries: the scale memory embeddings start at."""
    weight = decoder.get_input_embeddings().weight
    return float(weight.detach().float().pow(2).mean().sqrt())


class ContextEncoder:
    """The first ``layers`` layers of a frozen llama-style decoder (weights shared, nothing copied), then its
    final norm: hidden states for every context token."""

    def __init__(self, decoder: nn.Module, layers: int):
        base = decoder.base_model
        if not hasattr(base, "layers") or not hasattr(base, "embed_tokens"):
            raise CrossedgeError(
                f"{type(decoder).__name__} has no llama-style .layers: the dolphin encoder borrows a decoder's first "
                "layers; use a llama-family decoder such as smollm2-135m"
            )
        # A shallow view of the base model with its own module table and config, so it runs only the first
        # ``layers`` layers (the base model loops over config.num_hidden_layers) while sharing every weight.
        view = copy.copy(base)
        view.__dict__["_modules"] = dict(base._modules)
        view.__dict__["config"] = copy.deepcopy(base.config)
        view.config.num_hidden_layers = layers
        view.layers = nn.ModuleList(list(base.layers)[:layers])
        self.view = view
        self.layers = layers

    @torch.no_grad()
    def __call__(self, context_ids: torch.Tensor) -> torch.Tensor:
        """(batch, L) token ids -> (batch, L, hidden) features; never tracks gradients (the encoder is frozen).

        With no layers the features are the token embeddings themselves (not passed through the final norm, whose
        per-channel weights are tuned for the LM head, not for the input side)."""
        if self.layers == 0:
            return self.view.embed_tokens(context_ids)
        return self.view(input_ids=context_ids, use_cache=False).last_hidden_state


class MemoryCompressor(nn.Module):
    """Attention pooling over each chunk of ``ratio`` features (one learned query per head), then an MLP projector
    with a linear skip into the decoder's embedding space. Initialised as mean pooling through an identity skip of
    the RMS-normalised pooled vector, scaled to the embeddings' RMS: over token embeddings (no encoder layers) each
    memory slot starts as its chunk's mean embedding at a token embedding's scale."""

    def __init__(self, config: DolphinConfig, initial_scale: float = 1.0):
        super().__init__()
        d = config.hidden_size
        self.config = config
        self.pool_norm = nn.LayerNorm(d)
        self.scores = nn.Linear(d, config.pool_heads)
        self.proj_norm = nn.LayerNorm(d)
        self.skip = nn.Linear(d, d, bias=False)
        self.up = nn.Linear(d, config.projector_hidden)
        self.down = nn.Linear(config.projector_hidden, d)
        self.scale = nn.Parameter(torch.tensor(float(initial_scale)))
        with torch.no_grad():
            nn.init.zeros_(self.scores.weight)
            nn.init.zeros_(self.scores.bias)
            self.skip.weight.copy_(torch.eye(d))
            nn.init.zeros_(self.down.weight)
            nn.init.zeros_(self.down.bias)

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        """(batch, L, d) -> (batch, ceil(L / ratio), d): a softmax-weighted mean per chunk and head."""
        b, length, d = features.shape
        r, heads = self.config.ratio, self.config.pool_heads
        chunks = math.ceil(length / r)
        pad = chunks * r - length
        valid = torch.ones(length, dtype=torch.bool, device=features.device)
        if pad:
            features = F.pad(features, (0, 0, 0, pad))
            valid = F.pad(valid, (0, pad), value=False)
        scores = self.scores(self.pool_norm(features))  # (b, chunks * r, heads)
        scores = scores.masked_fill(~valid[None, :, None], float("-inf"))
        weights = scores.view(b, chunks, r, heads).softmax(dim=2)
        values = features.reshape(b, chunks, r, heads, d // heads)
        return torch.einsum("bcrh,bcrhe->bche", weights, values).reshape(b, chunks, d)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Encoder features (batch, L, d) -> memory embeddings (batch, ceil(L / ratio), d)."""
        pooled = self.pool(features)
        direction = pooled * torch.rsqrt(pooled.pow(2).mean(-1, keepdim=True) + 1e-6)
        return (self.skip(direction) + self.down(F.gelu(self.up(self.proj_norm(pooled))))) * self.scale


class DolphinReader:
    """A frozen decoder that reads long contexts as memory embeddings from a trainable compressor."""

    def __init__(self, decoder: nn.Module, compressor: MemoryCompressor):
        check_decoder(compressor.config, decoder)
        decoder.requires_grad_(False)  # stage 1: gradients reach the compressor only
        decoder.eval()
        self.decoder = decoder
        self.compressor = compressor
        self.config = compressor.config
        self.encoder = ContextEncoder(decoder, compressor.config.encoder_layers)

    def features(self, context_ids: torch.Tensor) -> torch.Tensor:
        """Frozen encoder features of (batch, L) context ids."""
        return self.encoder(context_ids)

    def memory(self, context_ids: torch.Tensor) -> torch.Tensor:
        """(batch, L) context ids -> (batch, ceil(L / ratio), d) memory embeddings."""
        return self.compressor(self.features(context_ids))

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """The decoder's own input embeddings of token ids."""
        return self.decoder.get_input_embeddings()(ids)

    def inputs_embeds(self, memory: torch.Tensor | None, ids: torch.Tensor) -> torch.Tensor:
        """Memory embeddings (or none) ahead of the embeddings of ``ids`` (batch, n)."""
        tokens = self.embed(ids)
        return tokens if memory is None else torch.cat([memory.to(tokens.dtype), tokens], dim=1)

    def logits(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """Decoder logits at every position of ``inputs_embeds``."""
        return self.decoder(inputs_embeds=inputs_embeds, use_cache=False).logits


def new_compressor(decoder: nn.Module, name: str, *, seed: int = 0, **options: Any) -> MemoryCompressor:
    """A fresh compressor for ``decoder`` (initialised from ``seed``), its output scaled to the embeddings' RMS."""
    config = DolphinConfig.for_decoder(decoder, name, **options)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return MemoryCompressor(config, embedding_rms(decoder))


def parameter_count(module: nn.Module) -> int:
    """Parameters of ``module``."""
    return sum(p.numel() for p in module.parameters())


# ---- files ------------------------------------------------------------------------------------------------------


def check_writable(path: Path | str, *, force: bool = False) -> Path:
    """``path`` if a compressor may be written there: absent, one written here, or ``force``."""
    return model_files.check_writable(path, FILE_FORMAT, WHAT, force=force)


def save_compressor(
    compressor: MemoryCompressor, path: Path | str, *, record: dict[str, Any] | None = None, force: bool = False
) -> Path:
    """Write the compressor as safetensors with its config and a training record in the metadata."""
    return model_files.save_with_config(compressor, path, FILE_FORMAT, WHAT, force=force, extra=record)


def load_compressor(path: Path | str, decoder: nn.Module | None = None) -> MemoryCompressor:
    """A compressor from a file of :func:`save_compressor`; refuses foreign files, tensors that do not match the
    file's config, and (given ``decoder``) a decoder of another width, depth or vocabulary."""
    config = DolphinConfig.from_dict(model_files.saved_config(path, FILE_FORMAT, WHAT, TRAIN_COMMAND))
    if decoder is not None:
        check_decoder(config, decoder)
    return model_files.load_state_checked(MemoryCompressor(config), path)


def saved_record(path: Path | str) -> dict[str, Any]:
    """The training record a compressor file was saved with, or {}."""
    return model_files.saved_extra(path)
