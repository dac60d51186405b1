"""A small encoder-decoder speech-to-text model whose cross-attention can be audited.

Encoder: a strided 1-D convolution over :func:`asr.features` frames (``stride`` frames per
memory position), sinusoidal positions and pre-norm transformer layers. Decoder: character
embeddings (:class:`asr.CharTokenizer` ids), then per layer causal self-attention,
cross-attention over the encoder output and a feed-forward block. Every attention is
written out, so :meth:`EncoderDecoderAsr.decode` returns the exact softmax weights the
forward pass used (one ``(N, heads, L, S)`` tensor per decoder layer) and gradients flow
from the logits through them to the memory and the input features.

It implements the audit's :class:`crossedge.crossmodal.audit.CrossAttentionModel`:
``tokens`` given to :meth:`decode` begin with :data:`asr.BOS`, and ``logits[:, t]`` scores
the token that follows ``tokens[:, t]``.

Saved folders hold ``model.safetensors`` with ``{"format": "crossedge-encdec-asr-v1",
"config": json}`` in the metadata.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from crossedge.core.errors import CrossedgeError

from . import asr

FORMAT = "crossedge-encdec-asr-v1"
WEIGHTS = "model.safetensors"


class EncDecError(CrossedgeError, ValueError):
    """An encoder-decoder model that cannot be built, saved or loaded as asked."""


@dataclass
class EncDecConfig:
    """Sizes of :class:`EncoderDecoderAsr` (plain values, stored in the saved metadata)."""

    input_dim: int = asr.STACK * asr.N_MELS
    vocab_size: int = len(asr.ALPHABET) + 3
    width: int = 96
    heads: int = 4
    encoder_layers: int = 2
    decoder_layers: int = 2
    ff: int = 192
    stride: int = 2
    dropout: float = 0.1
    max_len: int = 64

    def __post_init__(self) -> None:
        if self.heads < 1 or self.width % self.heads:
            raise EncDecError(f"width {self.width} does not split into {self.heads} heads; pick a divisible width")
        if min(self.encoder_layers, self.decoder_layers, self.stride, self.ff, self.max_len) < 1:
            raise EncDecError("layers, stride, ff and max_len must be at least 1")


def sinusoids(length: int, width: int) -> torch.Tensor:
    """(length, width) fixed sinusoidal position codes."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    rate = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(10000.0) / width))
    out = torch.zeros(length, width)
    out[:, 0::2] = torch.sin(position * rate)
    out[:, 1::2] = torch.cos(position * rate[: width // 2])
    return out


class Attention(nn.Module):
    """Multi-head attention written out; returns ``(output, softmax weights (N, heads, Lq, Lk))``."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(width, width)
        self.key_value = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, width)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, allowed: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``allowed`` broadcasts to (N, heads, Lq, Lk); False keys get exactly zero weight."""
        n, lq, width = query.shape
        lk = key.shape[1]
        q = self.query(query).view(n, lq, self.heads, -1).transpose(1, 2)
        k, v = self.key_value(key).view(n, lk, 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        if allowed is not None:
            scores = scores.masked_fill(~allowed, float("-inf"))
        weights = scores.softmax(dim=-1)
        mixed = (self.dropout(weights) @ v).transpose(1, 2).reshape(n, lq, width)
        return self.out(mixed), weights


class FeedForward(nn.Sequential):
    def __init__(self, width: int, ff: int, dropout: float) -> None:
        super().__init__(nn.Linear(width, ff), nn.GELU(), nn.Dropout(dropout), nn.Linear(ff, width))


class EncoderLayer(nn.Module):
    def __init__(self, c: EncDecConfig) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(c.width), nn.LayerNorm(c.width)
        self.attention = Attention(c.width, c.heads, c.dropout)
        self.ff = FeedForward(c.width, c.ff, c.dropout)
        self.dropout = nn.Dropout(c.dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.dropout(self.attention(h, h, allowed)[0])
        return x + self.dropout(self.ff(self.norm2(x)))


class DecoderLayer(nn.Module):
    def __init__(self, c: EncDecConfig) -> None:
        super().__init__()
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(c.width), nn.LayerNorm(c.width), nn.LayerNorm(c.width)
        self.self_attention = Attention(c.width, c.heads, c.dropout)
        self.cross_attention = Attention(c.width, c.heads, c.dropout)
        self.ff = FeedForward(c.width, c.ff, c.dropout)
        self.dropout = nn.Dropout(c.dropout)

    def forward(
        self, x: torch.Tensor, memory: torch.Tensor, causal: torch.Tensor, memory_allowed: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.norm1(x)
        x = x + self.dropout(self.self_attention(h, h, causal)[0])
        attended, weights = self.cross_attention(self.norm2(x), memory, memory_allowed)
        x = x + self.dropout(attended)
        return x + self.dropout(self.ff(self.norm3(x))), weights


class CharacterDecoding(nn.Module):
    """A character decoder over a memory: embedding, causal layers with cross-attention, norm, head,
    and greedy decoding. A model builds it with :meth:`build_character_decoder` and gives ``encode``,
    ``memory_mask`` and ``tokenizer``."""

    config: EncDecConfig
    tokenizer: asr.CharTokenizer

    def build_character_decoder(self, c: EncDecConfig, positions: int) -> None:
        """The decoder's modules (in this order, so seeded initialisation does not move)."""
        self.embed = nn.Embedding(c.vocab_size, c.width)
        self.decoder = nn.ModuleList(DecoderLayer(c) for _ in range(c.decoder_layers))
        self.decoder_norm = nn.LayerNorm(c.width)
        self.head = nn.Linear(c.width, c.vocab_size)
        self.dropout = nn.Dropout(c.dropout)
        self.register_buffer("positions", sinusoids(positions, c.width), persistent=False)

    def decode(
        self, memory: torch.Tensor, tokens: torch.Tensor, memory_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``(logits (N, L, V), cross-attention weights per layer [(N, heads, L, S)])``; tokens start with BOS."""
        length = tokens.shape[1]
        if length > self.positions.shape[0]:
            raise EncDecError(f"{length} tokens is more than the {self.positions.shape[0]} positions the model has")
        x = self.dropout(self.embed(tokens) * math.sqrt(self.config.width) + self.positions[:length])
        causal = torch.ones(length, length, dtype=torch.bool, device=tokens.device).tril()
        allowed = None if memory_mask is None else memory_mask[:, None, None, :]
        weights = []
        for layer in self.decoder:
            x, w = layer(x, memory, causal, allowed)
            weights.append(w)
        return self.head(self.decoder_norm(x)), weights

    def forward(
        self, features: torch.Tensor, tokens: torch.Tensor, frame_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Teacher-forced logits (N, L, V)."""
        memory = self.encode(features, frame_mask)
        mask = None if frame_mask is None else self.memory_mask(frame_mask)
        return self.decode(memory, tokens, mask)[0]

    @torch.no_grad()
    def greedy_ids(self, features: torch.Tensor, max_len: int | None = None) -> list[int]:
        """Greedy token ids (without BOS and EOS) for one utterance (1, T, F)."""
        max_len = max_len or self.config.max_len
        memory = self.encode(features)
        tokens = torch.tensor([[asr.BOS]], device=features.device)
        out: list[int] = []
        for _ in range(max_len):
            logits, _ = self.decode(memory, tokens)
            nxt = int(logits[0, -1].argmax())
            if nxt == asr.EOS:
                break
            out.append(nxt)
            tokens = torch.cat([tokens, torch.tensor([[nxt]], device=tokens.device)], dim=1)
        return out

    def transcribe(self, features: torch.Tensor, max_len: int | None = None) -> str:
        """Greedy transcription of one utterance (1, T, F)."""
        return self.tokenizer.decode(self.greedy_ids(features, max_len))


class EncoderDecoderAsr(CharacterDecoding):
    """Speech features (N, T, F) -> memory (N, ceil(T / stride), width) -> character logits."""

    def __init__(self, config: EncDecConfig | None = None) -> None:
        super().__init__()
        c = self.config = config or EncDecConfig()
        self.tokenizer = asr.CharTokenizer()
        self.subsample = nn.Conv1d(c.input_dim, c.width, kernel_size=2 * c.stride - 1, stride=c.stride,
                                   padding=c.stride - 1)  # fmt: skip
        self.encoder = nn.ModuleList(EncoderLayer(c) for _ in range(c.encoder_layers))
        self.encoder_norm = nn.LayerNorm(c.width)
        self.build_character_decoder(c, 4096)

    @property
    def frames_per_position(self) -> int:
        """Input frames per memory position (the convolution's stride)."""
        return self.config.stride

    def memory_mask(self, frame_mask: torch.Tensor) -> torch.Tensor:
        """(N, S) valid memory positions of an (N, T) frame mask."""
        return frame_mask[:, :: self.config.stride]

    def encode(self, features: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Memory (N, S, width) of features (N, T, F); ``frame_mask`` (N, T) marks real frames in a padded batch."""
        x = torch.nn.functional.gelu(self.subsample(features.transpose(1, 2))).transpose(1, 2)
        x = self.dropout(x + self.positions[: x.shape[1]])
        allowed = None if frame_mask is None else self.memory_mask(frame_mask)[:, None, None, :]
        for layer in self.encoder:
            x = layer(x, allowed)
        return self.encoder_norm(x)


def token_batch(texts: list[str], tokenizer: asr.CharTokenizer, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forcing ``(inputs (N, L) starting with BOS, targets (N, L) ending with EOS, PAD elsewhere)``."""
    ids = [tokenizer.encode(t)[: max_len - 1] for t in texts]
    length = max(len(i) for i in ids) + 1
    inputs = torch.full((len(ids), length), asr.PAD, dtype=torch.long)
    targets = torch.full((len(ids), length), asr.PAD, dtype=torch.long)
    for row, i in enumerate(ids):
        inputs[row, : len(i) + 1] = torch.tensor([asr.BOS, *i])
        targets[row, : len(i) + 1] = torch.tensor([*i, asr.EOS])
    return inputs, targets


def mask_spans(features: torch.Tensor, rng: np.random.Generator, bands: int = 2, spans: int = 2) -> torch.Tensor:
    """A copy of (T, F) normalized features with ``bands`` feature bands (<= F/10 wide) and ``spans`` frame spans
    (<= T/10 long) set to zero, the utterance mean."""
    out = features.clone()
    frames, dim = out.shape
    for size, count, axis in ((dim, bands, 1), (frames, spans, 0)):
        for _ in range(count):
            width = int(rng.integers(0, max(1, size // 10) + 1))
            start = int(rng.integers(0, max(1, size - width) + 1))
            if axis:
                out[:, start : start + width] = 0.0
            else:
                out[start : start + width] = 0.0
    return out


def train_encdec(
    corpus: asr.AsrCorpus,
    steps: int = 1500,
    seed: int = 0,
    batch_size: int = 16,
    lr: float = 1e-3,
    config: EncDecConfig | None = None,
    augment: bool = False,
    progress: Callable[[int], None] | None = None,
) -> tuple[EncoderDecoderAsr, list[float]]:
    """Train on the corpus's train split (teacher forcing, cross-entropy); returns ``(model in eval mode, losses)``.

    ``augment`` masks random feature bands and frame spans of each training utterance (SpecAugment's
    masking); it needs more steps than the bench's budget to pay off, so it is off by default.
    """
    from . import speech
    from .training import device, train_steps, unwrap

    train = corpus.indices("train")
    if not train:
        raise EncDecError("the corpus has no train utterances; build it with more texts")
    torch.manual_seed(seed)
    model = EncoderDecoderAsr(config)
    rng = np.random.default_rng(seed)

    def loss_fn(prepared: nn.Module, step: int) -> torch.Tensor:
        chosen = rng.choice(train, size=min(batch_size, len(train)), replace=False)
        features, mask = speech.pad_batch([mask_spans(corpus.features[i], rng) if augment else corpus.features[i]
                                           for i in chosen])  # fmt: skip
        inputs, targets = token_batch([corpus.texts[i] for i in chosen], model.tokenizer, model.config.max_len)
        where = device()
        logits = prepared(features.to(where), inputs.to(where), mask.to(where))
        return nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.to(where).reshape(-1), ignore_index=asr.PAD
        )

    model.train()
    losses = train_steps(model, list(model.parameters()), loss_fn, steps, lr=lr, clip=1.0, progress=progress)
    model = unwrap(model).cpu().eval()
    return model, losses


def evaluate(model: EncoderDecoderAsr, corpus: asr.AsrCorpus, split: str = "test") -> dict:
    """``{"cer", "references", "hypotheses"}`` of greedy transcriptions of one split (any model with
    ``transcribe(features (1, T, F))``)."""
    chosen = corpus.indices(split)
    refs = [corpus.texts[i] for i in chosen]
    hyps = [model.transcribe(corpus.features[i][None]) for i in chosen]
    return {"cer": asr.cer(refs, hyps), "references": refs, "hypotheses": hyps}


def check_save_folder(folder: str | Path) -> None:
    """Refuse a folder :func:`save` may not write into (a file there that another program wrote)."""
    from . import tagged

    if Path(folder).exists() and not Path(folder).is_dir():
        raise EncDecError(f"{folder} is a file; give a folder to save the model in")
    tagged.check_writable(Path(folder) / WEIGHTS, FORMAT, EncDecError)


def save(model: EncoderDecoderAsr, folder: str | Path) -> Path:
    """Write ``folder/model.safetensors`` (weights, format tag and config); returns the folder."""
    from . import tagged

    folder = Path(folder)
    check_save_folder(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tagged.write(folder / WEIGHTS, model.state_dict(), FORMAT, error=EncDecError, config=asdict(model.config))
    return folder


def load(folder: str | Path) -> EncoderDecoderAsr:
    """The model saved by :func:`save`, in eval mode; a damaged or foreign folder is refused in one line."""
    from . import tagged

    def build(meta: dict) -> EncoderDecoderAsr:
        return EncoderDecoderAsr(tagged.dataclass_config(EncDecConfig, meta["config"]))

    model = tagged.load_module(Path(folder) / WEIGHTS, FORMAT, "encoder-decoder ASR model", EncDecError, build)
    return model.eval()
