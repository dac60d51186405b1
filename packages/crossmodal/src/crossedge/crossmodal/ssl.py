"""A speech encoder pretrained here, self-supervised, by masked prediction of log-mel frames.

The deepfake task's learned view (the role a wav2vec 2.0 / HuBERT front end plays in the
Two Views, One Truth paper) is :class:`MaskedSpeechEncoder`: two stride-2 convolutions turn
10 ms log-mel frames into 40 ms tokens, a depthwise convolution adds relative position, and a
small pre-norm transformer encodes them. Pretraining (:func:`pretrain`) hides random spans of
input frames (set to the mean after per-band standardization, so the convolutions cannot see
them either) and trains the encoder to reconstruct the hidden frames from the context, with a
mean squared error on the hidden frames only. No labels are used: the encoder is pretrained
on unlabelled training audio (bona fide and spoofed alike) and then used frozen
(:func:`encode`).

Saved as safetensors (:func:`save_encoder`) with the format tag ``crossedge-ssl-speech-v1``
and the configuration in the metadata; a damaged or foreign file is refused in one line.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from crossedge.core.errors import CrossedgeError

FORMAT = "crossedge-ssl-speech-v1"
STRIDE = 4  # frames per token: two stride-2 convolutions


class SSLError(CrossedgeError, ValueError):
    """A self-supervised speech encoder that cannot be built, trained, saved or loaded."""


@dataclass(frozen=True)
class EncoderConfig:
    """Sizes of :class:`MaskedSpeechEncoder`."""

    n_mels: int = 40
    width: int = 64
    layers: int = 2
    heads: int = 4


class MaskedSpeechEncoder(nn.Module):
    """Log-mel frames (N, T, n_mels) -> tokens (N, ceil(T / 4), width), with a head that reconstructs frames."""

    def __init__(self, n_mels: int = 40, width: int = 64, layers: int = 2, heads: int = 4) -> None:
        super().__init__()
        if width % heads:
            raise SSLError(f"encoder width {width} does not split into {heads} heads; pick width divisible by heads")
        self.config = EncoderConfig(n_mels, width, layers, heads)
        self.register_buffer("mean", torch.zeros(n_mels))
        self.register_buffer("std", torch.ones(n_mels))
        self.front = nn.ModuleList(
            [nn.Conv1d(n_mels, width, 5, stride=2, padding=2), nn.Conv1d(width, width, 5, stride=2, padding=2)]
        )
        self.position = nn.Conv1d(width, width, 9, padding=4, groups=width)
        layer = nn.TransformerEncoderLayer(
            width, heads, 2 * width, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.reconstruct = nn.Linear(width, STRIDE * n_mels)

    def standardize(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames standardized per mel band with the statistics of the pretraining audio."""
        return (frames - self.mean) / self.std

    def forward(
        self, frames: torch.Tensor, mask: torch.Tensor | None = None, hide: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tokens, token_mask)`` of raw log-mel ``frames``; frames where ``hide`` is True are blanked first."""
        states, token_mask = self.hidden_states(frames, mask, hide)
        return self.norm(states[-1]), token_mask

    def hidden_states(
        self, frames: torch.Tensor, mask: torch.Tensor | None = None, hide: torch.Tensor | None = None
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The tokens after the convolutions and after every transformer layer, and the token mask."""
        n, t, _ = frames.shape
        if mask is None:
            mask = torch.ones(n, t, dtype=torch.bool, device=frames.device)
        x = self.standardize(frames).masked_fill(~mask[..., None], 0.0)
        if hide is not None:
            x = x.masked_fill(hide[..., None], 0.0)
        # padding is zeroed after every convolution, so that the next one sees what an unpadded utterance would
        h, token_mask = x.transpose(1, 2), mask
        for conv in self.front:
            token_mask = token_mask[:, ::2]
            h = nn.functional.gelu(conv(h)) * token_mask[:, None, :]
        h = (h + self.position(h) * token_mask[:, None, :]).transpose(1, 2)
        states = [h]
        for layer in self.encoder.layers:
            states.append(layer(states[-1], src_key_padding_mask=~token_mask))
        return states, token_mask

    def predict_frames(self, tokens: torch.Tensor, frames: int) -> torch.Tensor:
        """(N, frames, n_mels) standardized frames reconstructed from tokens."""
        n, length, _ = tokens.shape
        return self.reconstruct(tokens).view(n, length * STRIDE, -1)[:, :frames]


def span_mask(mask: torch.Tensor, ratio: float, span: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Spans of ``span`` frames to hide, started at each valid frame with probability ``ratio / span``.

    About ``ratio`` of the frames are hidden (fewer where spans overlap); only frames that
    ``mask`` keeps are ever hidden, and every row hides at least one span.
    """
    if not 0.0 < ratio < 1.0 or span < 1:
        raise SSLError(f"mask ratio must be in (0, 1) and span >= 1; got ratio={ratio}, span={span}")
    n, t = mask.shape
    starts = (torch.rand(n, t, generator=generator) < ratio / span) & mask
    lengths = mask.sum(1)
    forced = (torch.rand(n, generator=generator) * lengths.clamp_min(1)).long()
    starts[torch.arange(n), forced.clamp_max(t - 1)] = True
    hidden = torch.zeros_like(starts)
    for offset in range(span):
        hidden[:, offset:] |= starts[:, : t - offset]
    return hidden & mask


def masked_prediction_loss(
    model: nn.Module,
    frames: torch.Tensor,
    mask: torch.Tensor,
    generator: torch.Generator | None = None,
    ratio: float = 0.4,
    span: int = 8,
) -> torch.Tensor:
    """Mean squared error of the reconstructed standardized frames, over the hidden frames only."""
    hide = span_mask(mask, ratio, span, generator)
    tokens, _ = model(frames, mask, hide)
    core = model.module if hasattr(model, "module") else model  # a distributed wrapper hides the methods
    predicted = core.predict_frames(tokens, frames.shape[1])
    target = core.standardize(frames)
    err = (predicted - target).pow(2).mean(-1)
    return (err * hide).sum() / hide.sum().clamp_min(1)


def _crops(
    features: Sequence[torch.Tensor], batch: int, crop: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    picks = torch.randint(len(features), (batch,), generator=generator).tolist()
    out = torch.zeros(batch, crop, features[0].shape[-1])
    mask = torch.zeros(batch, crop, dtype=torch.bool)
    for row, i in enumerate(picks):
        f = features[i]
        start = int(torch.randint(max(1, f.shape[0] - crop + 1), (1,), generator=generator))
        piece = f[start : start + crop]
        out[row, : len(piece)] = piece
        mask[row, : len(piece)] = True
    return out, mask


def pretrain(
    features: Sequence[torch.Tensor],
    steps: int = 300,
    seed: int = 0,
    config: EncoderConfig | None = None,
    batch: int = 16,
    crop: int = 192,
    lr: float = 2e-3,
    ratio: float = 0.4,
    span: int = 8,
    progress: Callable[[int], None] | None = None,
) -> tuple[MaskedSpeechEncoder, list[float]]:
    """An encoder pretrained by masked prediction on unlabelled (T, n_mels) log-mel frames, and its losses."""
    from .training import train_steps

    if not features:
        raise SSLError("masked-prediction pretraining needs at least one utterance")
    config = config or EncoderConfig(n_mels=int(features[0].shape[-1]))
    if any(f.ndim != 2 or f.shape[-1] != config.n_mels for f in features):
        raise SSLError(f"pretraining features must each be (frames, {config.n_mels}) log-mel energies")
    torch.manual_seed(seed)
    model = MaskedSpeechEncoder(**asdict(config))
    everything = torch.cat(list(features))
    model.mean.copy_(everything.mean(0))
    model.std.copy_(everything.std(0).clamp_min(1e-3))
    generator = torch.Generator().manual_seed(seed)

    def loss_fn(prepared: nn.Module, _step: int) -> torch.Tensor:
        frames, mask = _crops(features, batch, crop, generator)
        return masked_prediction_loss(prepared, frames, mask, generator, ratio, span)

    model.train()
    losses = train_steps(model, list(model.parameters()), loss_fn, steps, lr=lr, clip=1.0, progress=progress)
    return model.eval(), losses


@torch.no_grad()
def encode(
    model: MaskedSpeechEncoder, features: Sequence[torch.Tensor], batch: int = 32, all_layers: bool = False
) -> list[torch.Tensor]:
    """The frozen encoder's tokens (ceil(T / 4), width) for each (T, n_mels) utterance.

    With ``all_layers`` every level is kept, as SUPERB-style probes of SSL models do: the
    convolution output and each transformer layer's output, layer-normalized and concatenated,
    (ceil(T / 4), (layers + 1) * width). Masked reconstruction shapes the last layer for smooth
    log-mel frames; the lower levels keep more of the fine detail a detector needs.
    """
    from .speech import pad_batch

    model.eval()
    order = sorted(range(len(features)), key=lambda i: features[i].shape[0])
    tokens_by_index: dict[int, torch.Tensor] = {}
    for start in range(0, len(order), batch):
        chunk = order[start : start + batch]
        frames, mask = pad_batch([features[i] for i in chunk])
        if all_layers:
            states, token_mask = model.hidden_states(frames, mask)
            tokens = torch.cat([nn.functional.layer_norm(h, h.shape[-1:]) for h in states], dim=-1)
        else:
            tokens, token_mask = model(frames, mask)
        for row, i in enumerate(chunk):
            tokens_by_index[i] = tokens[row, token_mask[row]].clone()
    return [tokens_by_index[i] for i in range(len(features))]


def save_encoder(model: MaskedSpeechEncoder, path: str | Path) -> Path:
    """Write the encoder as safetensors with its format tag and configuration in the metadata."""
    from . import tagged

    return tagged.write(path, model.state_dict(), FORMAT, error=SSLError, config=asdict(model.config))


def load_encoder(path: str | Path) -> MaskedSpeechEncoder:
    """Read a :func:`save_encoder` file; a damaged, foreign or incomplete file is refused in one line."""
    from . import tagged

    model = tagged.load_module(path, FORMAT, "speech encoder", SSLError, lambda f: MaskedSpeechEncoder(**f["config"]))
    return model.eval()
