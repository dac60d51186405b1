"""Zipper: a speech tower zipped into a frozen text tower by gated cross-attention.

Two decoder-style towers. The speech tower (:class:`SpeechTower`) is small and trained here:
a strided convolution over :func:`asr.features` frames, sinusoidal positions and causal
pre-norm transformer layers, pretrained alone with a CTC head over characters
(:func:`train_speech_tower`). The text tower is a causal language model loaded through
:func:`crossedge.core.sources.load_model` (``smollm2-135m`` by default) and is frozen: its
parameters never require gradients, it stays in eval mode and it is never given to the
optimizer.

:class:`ZipperModel` inserts a :class:`GatedCrossAttention` block after every ``every``-th
text layer: pre-norm, cross-attention from the text hidden states (queries) to the speech
tower's states (keys and values, projected by each block), added through ``tanh(gate)``
with the gate initialised to 0, optionally followed by a gated feed-forward. The blocks are
attached as forward hooks on the text tower's decoder layers only for the duration of a
fused call; a text-only call runs the text tower's own forward with nothing attached, so
its logits are the text tower's, bit for bit, before and after any Zipper training.

Fusion training (:func:`train_zipper`) optimizes the blocks only: the speech tower stays as
CTC pretraining left it (``tune_speech=True`` fine-tunes it too). The prompt is the text
tower's begin token followed by the transcript's tokens in the tower's own tokenizer,
ending with its end token (SmolLM2's ``<|im_start|>`` / ``<|im_end|>``, ids 1 and 2).

:class:`SpeechOnlyAsr` is the speech-only baseline: the same speech tower and a small
character decoder (the encoder-decoder's layers) sized to about as many trainable
parameters as the Zipper blocks.

It implements the audit's :class:`crossedge.crossmodal.audit.CrossAttentionModel`; saved
folders hold ``model.safetensors`` with only what was trained (speech tower and blocks) and
``{"format": "crossedge-zipper-v1", "config", "speech", "text_tower"}`` in the metadata, where
``text_tower`` names the tower (a registered name or a folder) and fingerprints it so that
:func:`load` refuses a different one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from crossedge.core.errors import CrossedgeError

from . import asr, encdec

FORMAT = "crossedge-zipper-v1"
WEIGHTS = "model.safetensors"
TEXT_TOWER = "smollm2-135m"
IGNORE = -100


class ZipperError(CrossedgeError, ValueError):
    """A Zipper model that cannot be built, trained, saved or loaded as asked."""


# ---- the speech tower -----------------------------------------------------------------------


@dataclass
class SpeechTowerConfig:
    """Sizes of :class:`SpeechTower` (plain values, stored in the saved metadata)."""

    input_dim: int = asr.STACK * asr.N_MELS
    width: int = 144
    heads: int = 4
    layers: int = 4
    ff: int = 288
    stride: int = 2
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.heads < 1 or self.width % self.heads:
            raise ZipperError(f"speech width {self.width} does not split into {self.heads} heads; pick a divisible one")
        if min(self.layers, self.stride, self.ff) < 1:
            raise ZipperError("speech layers, stride and ff must be at least 1")


class SpeechTower(nn.Module):
    """Features (N, T, F) -> causal states (N, ceil(T / stride), width); :meth:`ctc_logits` over characters."""

    def __init__(self, config: SpeechTowerConfig | None = None) -> None:
        super().__init__()
        c = self.config = config or SpeechTowerConfig()
        layer = encdec.EncDecConfig(width=c.width, heads=c.heads, ff=c.ff, dropout=c.dropout)
        self.subsample = nn.Conv1d(c.input_dim, c.width, kernel_size=2 * c.stride - 1, stride=c.stride,
                                   padding=c.stride - 1)  # fmt: skip
        self.layers = nn.ModuleList(encdec.EncoderLayer(layer) for _ in range(c.layers))
        self.norm = nn.LayerNorm(c.width)
        self.ctc = nn.Linear(c.width, asr.CharTokenizer().vocab_size)  # blank = asr.PAD
        self.dropout = nn.Dropout(c.dropout)
        self.register_buffer("positions", encdec.sinusoids(4096, c.width), persistent=False)

    def memory_mask(self, frame_mask: torch.Tensor) -> torch.Tensor:
        """(N, S) valid positions of an (N, T) frame mask."""
        return frame_mask[:, :: self.config.stride]

    def forward(self, features: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = torch.nn.functional.gelu(self.subsample(features.transpose(1, 2))).transpose(1, 2)
        length = x.shape[1]
        if length > self.positions.shape[0]:
            raise ZipperError(f"{length} speech positions is more than the {self.positions.shape[0]} the tower has")
        x = self.dropout(x + self.positions[:length])
        allowed = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()[None, None]
        if frame_mask is not None:
            # a padded query still sees itself, so no softmax row is empty
            allowed = allowed & (self.memory_mask(frame_mask)[:, None, None, :] | torch.eye(length, dtype=torch.bool))
        for layer in self.layers:
            x = layer(x, allowed)
        return self.norm(x)

    def body_parameters(self) -> list[nn.Parameter]:
        """Every parameter but the CTC head's (what a fused model fine-tunes: it never uses the head)."""
        return [p for name, p in self.named_parameters() if not name.startswith("ctc.")]

    def ctc_logits(self, states: torch.Tensor) -> torch.Tensor:
        """(N, S, characters) CTC logits of the tower's states."""
        return self.ctc(states)

    @torch.no_grad()
    def transcribe(self, features: torch.Tensor) -> str:
        """Greedy CTC transcription of one utterance (1, T, F): repeats collapsed, blanks dropped."""
        best = self.ctc_logits(self(features))[0].argmax(-1).tolist()
        kept = [b for i, b in enumerate(best) if b != asr.PAD and (i == 0 or b != best[i - 1])]
        return asr.CharTokenizer().decode(kept)


def _batch(corpus: asr.AsrCorpus, chosen: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    from . import speech

    return speech.pad_batch([corpus.features[i] for i in chosen])


def _train_split(corpus: asr.AsrCorpus) -> list[int]:
    train = corpus.indices("train")
    if not train:
        raise ZipperError("the corpus has no train utterances; build it with more texts")
    return train


def train_speech_tower(
    corpus: asr.AsrCorpus,
    steps: int = 600,
    seed: int = 0,
    batch_size: int = 16,
    lr: float = 2e-3,
    config: SpeechTowerConfig | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[SpeechTower, list[float]]:
    """Pretrain a speech tower alone with CTC on the train split; returns ``(tower in eval mode, losses)``."""
    from .training import Objective, device, train_steps, unwrap

    train = _train_split(corpus)
    torch.manual_seed(seed)
    tower = SpeechTower(config)
    tokenizer = asr.CharTokenizer()
    rng = np.random.default_rng(seed)

    def loss(module: SpeechTower, features, mask, targets, target_lengths) -> torch.Tensor:
        log_probs = module.ctc_logits(module(features, mask)).log_softmax(-1).transpose(0, 1)
        lengths = module.memory_mask(mask).sum(1)
        return nn.functional.ctc_loss(log_probs, targets, lengths, target_lengths, blank=asr.PAD, zero_infinity=True)

    def loss_fn(prepared: nn.Module, step: int) -> torch.Tensor:
        chosen = rng.choice(train, size=min(batch_size, len(train)), replace=False)
        features, mask = _batch(corpus, chosen)
        ids = [tokenizer.encode(corpus.texts[i]) for i in chosen]
        where = device()
        targets = torch.tensor([t for i in ids for t in i], dtype=torch.long)
        target_lengths = torch.tensor([len(i) for i in ids], dtype=torch.long)
        return prepared(features.to(where), mask.to(where), targets.to(where), target_lengths.to(where))

    objective = Objective(tower, loss).train()
    losses = train_steps(objective, list(tower.parameters()), loss_fn, steps, lr=lr, clip=1.0, progress=progress)
    return unwrap(objective).module.cpu().eval(), losses


# ---- the text tower and the fused model -----------------------------------------------------


class TowerTokenizer:
    """A Hugging Face tokenizer seen as the audit expects: ``encode(text)`` and ``decode(ids)`` without specials.

    Text is encoded with a leading space, so that a word is the same token at the start as
    after another word; :meth:`decode` strips it again.
    """

    def __init__(self, tokenizer: Any, bos_id: int | None = None, eos_id: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.bos_id = int(tokenizer.bos_token_id if bos_id is None else bos_id)
        self.eos_id = int(tokenizer.eos_token_id if eos_id is None else eos_id)

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    def encode(self, text: str) -> list[int]:
        # every word with its leading space, the first one too: one token form per word, as inside a sentence
        return list(self.tokenizer.encode(" " + text.strip(), add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in ids]
        if self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id)]
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()


def decoder_layers(text_model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a transformers causal LM (``model.model.layers``)."""
    layers = getattr(getattr(text_model, "model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList) or not len(layers):
        raise ZipperError(
            f"{type(text_model).__name__} has no model.layers; the text tower must be a decoder-only causal LM"
        )
    return layers


def tower_identity(text_model: nn.Module, name: str) -> dict:
    """Name, sizes and a weight fingerprint of a text tower (what :func:`load` checks)."""
    config = text_model.config
    digest = hashlib.sha256()
    for tensor in (
        text_model.get_input_embeddings().weight[:64],
        decoder_layers(text_model)[0].parameters().__next__(),
    ):
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return {
        "name": name,
        "model_type": str(getattr(config, "model_type", type(text_model).__name__)),
        "layers": len(decoder_layers(text_model)),
        "width": int(config.hidden_size),
        "vocab": int(text_model.get_input_embeddings().weight.shape[0]),
        "fingerprint": digest.hexdigest()[:16],
    }


@dataclass
class ZipperConfig:
    """Sizes of the fusion blocks and how the Zipper is trained (plain values, stored in the metadata)."""

    every: int = 3
    width: int = 128
    heads: int = 4
    ff: int = 0
    dropout: float = 0.1
    max_len: int = 24
    tune_speech: bool = False
    relative: bool = False  # scale each block's update by the RMS of the text hidden state it is added to

    def __post_init__(self) -> None:
        if self.heads < 1 or self.width % self.heads:
            raise ZipperError(f"cross-attention width {self.width} does not split into {self.heads} heads")
        if self.every < 1 or self.max_len < 2 or self.ff < 0:
            raise ZipperError("every must be at least 1, max_len at least 2 and ff at least 0")


class GatedCrossAttention(nn.Module):
    """``h + tanh(gate) * rms(h) * attend(norm(h), memory)`` (and a gated feed-forward when ``ff``); gates start at 0.

    ``rms(h)`` is 1 when ``relative`` is off.
    """

    def __init__(self, text_width: int, memory_width: int, c: ZipperConfig) -> None:
        super().__init__()
        self.heads, self.relative = c.heads, c.relative
        self.norm = nn.LayerNorm(text_width)
        self.query = nn.Linear(text_width, c.width)
        self.key_value = nn.Linear(memory_width, 2 * c.width)
        self.out = nn.Linear(c.width, text_width)
        self.gate = nn.Parameter(torch.zeros(()))
        self.dropout = nn.Dropout(c.dropout)
        if c.ff:
            self.ff_norm = nn.LayerNorm(text_width)
            self.ff = encdec.FeedForward(text_width, c.ff, c.dropout)
            self.ff_gate = nn.Parameter(torch.zeros(()))

    def forward(
        self, hidden: torch.Tensor, memory: torch.Tensor, allowed: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(new hidden (N, L, D), softmax weights (N, heads, L, S))``; False in ``allowed`` gets zero weight."""
        n, lq, _ = hidden.shape
        lk = memory.shape[1]
        q = self.query(self.norm(hidden)).view(n, lq, self.heads, -1).transpose(1, 2)
        k, v = self.key_value(memory).view(n, lk, 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        if allowed is not None:
            scores = scores.masked_fill(~allowed, float("-inf"))
        weights = scores.softmax(-1)
        mixed = (self.dropout(weights) @ v).transpose(1, 2).reshape(n, lq, -1)
        # the text stream's scale varies by layer and position (RMS 3 to 30 in SmolLM2, 1000 on its first
        # token): scaled by it, a block's update is relative and a short training can reach it
        scale = hidden.detach().pow(2).mean(-1, keepdim=True).sqrt() if self.relative else 1.0
        hidden = hidden + torch.tanh(self.gate) * scale * self.dropout(self.out(mixed))
        if hasattr(self, "ff"):
            hidden = hidden + torch.tanh(self.ff_gate) * scale * self.dropout(self.ff(self.ff_norm(hidden)))
        return hidden, weights


class _OnSpeechTower(nn.Module):
    """A speech-to-text model reading a :class:`SpeechTower` held as ``self.speech``."""

    speech: SpeechTower

    @property
    def frames_per_position(self) -> int:
        """Input frames per speech position (the speech tower's stride)."""
        return self.speech.config.stride

    def memory_mask(self, frame_mask: torch.Tensor) -> torch.Tensor:
        """Which speech positions hold frames, from which input frames do (N, T) -> (N, S)."""
        return self.speech.memory_mask(frame_mask)


class ZipperModel(_OnSpeechTower):
    """A frozen text tower with a :class:`GatedCrossAttention` over the speech tower after every ``every``-th layer."""

    def __init__(
        self,
        text_model: nn.Module,
        tokenizer: Any,
        speech: SpeechTower,
        config: ZipperConfig | None = None,
        text_name: str = TEXT_TOWER,
    ) -> None:
        super().__init__()
        c = self.config = config or ZipperConfig()
        layers = decoder_layers(text_model)
        self.inserted = [i for i in range(len(layers)) if (i + 1) % c.every == 0]
        if not self.inserted:
            raise ZipperError(f"every={c.every} inserts no block into a {len(layers)}-layer text tower; lower it")
        self.text = text_model.requires_grad_(False).eval()
        self.text_identity = tower_identity(text_model, text_name)
        self.tokenizer = tokenizer if hasattr(tokenizer, "bos_id") else TowerTokenizer(tokenizer)
        self.bos_id, self.eos_id = self.tokenizer.bos_id, self.tokenizer.eos_id
        # a frozen speech tower's parameters need no gradient; one to the input features (the audit) still flows
        self.speech = speech.requires_grad_(c.tune_speech)
        width = int(text_model.config.hidden_size)
        self.blocks = nn.ModuleList(GatedCrossAttention(width, speech.config.width, c) for _ in self.inserted)
        self.train(False)

    def train(self, mode: bool = True) -> ZipperModel:
        """Train mode for the blocks (and the speech tower when tuned); the text tower always stays in eval."""
        super().train(mode)
        self.text.eval()
        if not self.config.tune_speech:
            self.speech.eval()
        return self

    def trainable(self) -> list[nn.Parameter]:
        """What fusion training optimizes: the blocks, and the speech tower when ``tune_speech``."""
        params = list(self.blocks.parameters())
        return params + self.speech.body_parameters() if self.config.tune_speech else params

    def encode(self, features: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Speech tower states (N, S, speech width) of features (N, T, F)."""
        return self.speech(features, frame_mask)

    def text_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """The text tower's own logits (N, L, V): nothing of the Zipper is attached."""
        return self.text(input_ids=tokens, use_cache=False).logits

    @contextlib.contextmanager
    def _zipped(self, memory: torch.Tensor, allowed: torch.Tensor | None, weights: list) -> Iterator[None]:
        layers = decoder_layers(self.text)

        def hook_for(block: GatedCrossAttention) -> Callable:
            def hook(module: nn.Module, args: Any, output: Any) -> Any:
                hidden = output[0] if isinstance(output, tuple) else output
                fused, w = block(hidden, memory, allowed)
                weights.append(w)
                return (fused, *output[1:]) if isinstance(output, tuple) else fused

            return hook

        handles = [
            layers[i].register_forward_hook(hook_for(b)) for i, b in zip(self.inserted, self.blocks, strict=True)
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def decode(
        self, memory: torch.Tensor | None, tokens: torch.Tensor, memory_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``(logits (N, L, V), cross-attention weights per block [(N, heads, L, S)])``; tokens start with BOS.

        With ``memory=None`` the text tower runs alone: its own logits and no weights.
        """
        if memory is None:
            return self.text_logits(tokens), []
        if memory.shape[0] != tokens.shape[0]:
            raise ZipperError(f"{memory.shape[0]} memories for {tokens.shape[0]} token rows; give one each")
        allowed = None if memory_mask is None else memory_mask[:, None, None, :]
        weights: list[torch.Tensor] = []
        with self._zipped(memory, allowed, weights):
            logits = self.text_logits(tokens)
        return logits, weights

    def forward(
        self, features: torch.Tensor, tokens: torch.Tensor, frame_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Teacher-forced fused logits (N, L, V)."""
        memory = self.encode(features, frame_mask)
        return self.decode(memory, tokens, None if frame_mask is None else self.memory_mask(frame_mask))[0]

    @torch.no_grad()
    def greedy_batch(self, features: Sequence[torch.Tensor], max_len: int | None = None) -> list[list[int]]:
        """Greedy token ids (without BOS and EOS) of several (T, F) utterances, decoded together."""
        from . import speech

        max_len = max_len or self.config.max_len
        batch, frame_mask = speech.pad_batch(list(features))
        memory = self.encode(batch, frame_mask)
        allowed = self.memory_mask(frame_mask)[:, None, None, :]
        tokens = torch.full((len(features), 1), self.bos_id, dtype=torch.long)
        done = torch.zeros(len(features), dtype=torch.bool)
        cache, step = None, tokens
        for _ in range(max_len):
            # the text tower's key/value cache: each step feeds only the new token; the blocks act per
            # position, so this gives the logits of a full teacher-forced decode
            with self._zipped(memory, allowed, []):
                out = self.text(input_ids=step, cache=cache, use_cache=True, logits_to_keep=1)
            cache = out.cache
            nxt = out.logits[:, -1].argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, self.eos_id), nxt)
            step = nxt[:, None]
            tokens = torch.cat([tokens, step], dim=1)
            done |= nxt == self.eos_id
            if bool(done.all()):
                break
        out = []
        for row in tokens[:, 1:].tolist():
            out.append(row[: row.index(self.eos_id)] if self.eos_id in row else row)
        return out

    def transcribe(self, features: torch.Tensor, max_len: int | None = None) -> str:
        """Greedy transcription of one utterance (1, T, F)."""
        return self.tokenizer.decode(self.greedy_batch([features[0]], max_len)[0])


def token_batch(
    texts: Sequence[str], tokenizer: Any, max_len: int, bos_id: int, eos_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher forcing ``(inputs (N, L): BOS + tokens, then EOS as padding; targets: tokens + EOS, then IGNORE)``."""
    ids = [list(tokenizer.encode(t))[: max_len - 1] for t in texts]
    length = max(len(i) for i in ids) + 1
    inputs = torch.full((len(ids), length), eos_id, dtype=torch.long)
    targets = torch.full((len(ids), length), IGNORE, dtype=torch.long)
    for row, i in enumerate(ids):
        inputs[row, : len(i) + 1] = torch.tensor([bos_id, *i])
        targets[row, : len(i) + 1] = torch.tensor([*i, eos_id])
    return inputs, targets


def _teacher_forced(
    model: nn.Module, corpus: asr.AsrCorpus, train: list[int], rng: np.random.Generator, batch_size: int, tokens
) -> Callable[[nn.Module, int], torch.Tensor]:
    from .training import device

    def loss_fn(prepared: nn.Module, step: int) -> torch.Tensor:
        chosen = rng.choice(train, size=min(batch_size, len(train)), replace=False)
        features, mask = _batch(corpus, chosen)
        inputs, targets = tokens([corpus.texts[i] for i in chosen])
        where = device()
        logits = prepared(features.to(where), inputs.to(where), mask.to(where))
        return nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.to(where).reshape(-1), ignore_index=IGNORE
        )

    return loss_fn


def train_zipper(
    model: ZipperModel,
    corpus: asr.AsrCorpus,
    steps: int = 300,
    seed: int = 0,
    batch_size: int = 16,
    lr: float = 2e-3,
    progress: Callable[[int], None] | None = None,
) -> tuple[ZipperModel, list[float]]:
    """Fusion training on the train split (teacher forcing, cross-entropy over the text tower's vocabulary).

    Only :meth:`ZipperModel.trainable` is optimized; the text tower is untouched. Returns
    ``(model in eval mode, losses)``.
    """
    from .training import train_steps, unwrap

    train = _train_split(corpus)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    c = model.config

    def tokens(texts):
        return token_batch(texts, model.tokenizer, c.max_len, model.bos_id, model.eos_id)

    model.train()
    loss_fn = _teacher_forced(model, corpus, train, rng, batch_size, tokens)
    losses = train_steps(model, model.trainable(), loss_fn, steps, lr=lr, clip=1.0, progress=progress)
    return unwrap(model).cpu().eval(), losses


# ---- the speech-only baseline ---------------------------------------------------------------


class SpeechOnlyAsr(_OnSpeechTower):
    """The speech tower and a small character decoder (encoder-decoder layers) cross-attending to it.

    Like :class:`ZipperModel` it takes the tower as given (frozen unless ``tune_speech``): give
    each model its own copy when the tower is tuned.
    """

    def __init__(self, speech: SpeechTower, config: encdec.EncDecConfig, tune_speech: bool = False) -> None:
        super().__init__()
        self.config, self.tune_speech = config, tune_speech
        self.speech = speech.requires_grad_(tune_speech)
        self.tokenizer = asr.CharTokenizer()
        self.bos_id, self.eos_id = asr.BOS, asr.EOS
        self.project = nn.Linear(speech.config.width, config.width)
        self.embed = nn.Embedding(config.vocab_size, config.width)
        self.decoder = nn.ModuleList(encdec.DecoderLayer(config) for _ in range(config.decoder_layers))
        self.norm = nn.LayerNorm(config.width)
        self.head = nn.Linear(config.width, config.vocab_size)
        self.dropout = nn.Dropout(config.dropout)
        self.register_buffer("positions", encdec.sinusoids(512, config.width), persistent=False)
        self.train(False)

    def train(self, mode: bool = True) -> SpeechOnlyAsr:
        super().train(mode)
        if not self.tune_speech:
            self.speech.eval()
        return self

    def trainable(self) -> list[nn.Parameter]:
        """The decoder (and the speech tower when tuned)."""
        own = [p for name, p in self.named_parameters() if not name.startswith("speech.")]
        return own + self.speech.body_parameters() if self.tune_speech else own

    def encode(self, features: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.project(self.speech(features, frame_mask))

    def decode(
        self, memory: torch.Tensor, tokens: torch.Tensor, memory_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        length = tokens.shape[1]
        x = self.dropout(self.embed(tokens) * math.sqrt(self.config.width) + self.positions[:length])
        causal = torch.ones(length, length, dtype=torch.bool, device=tokens.device).tril()
        allowed = None if memory_mask is None else memory_mask[:, None, None, :]
        weights = []
        for layer in self.decoder:
            x, w = layer(x, memory, causal, allowed)
            weights.append(w)
        return self.head(self.norm(x)), weights

    def forward(self, features: torch.Tensor, tokens: torch.Tensor, frame_mask: torch.Tensor | None = None):
        memory = self.encode(features, frame_mask)
        return self.decode(memory, tokens, None if frame_mask is None else self.memory_mask(frame_mask))[0]

    @torch.no_grad()
    def transcribe(self, features: torch.Tensor, max_len: int | None = None) -> str:
        memory = self.encode(features)
        tokens = torch.tensor([[asr.BOS]])
        for _ in range(max_len or self.config.max_len):
            nxt = int(self.decode(memory, tokens)[0][0, -1].argmax())
            if nxt == asr.EOS:
                break
            tokens = torch.cat([tokens, torch.tensor([[nxt]])], dim=1)
        return self.tokenizer.decode(tokens[0, 1:].tolist())


def count(params: Sequence[nn.Parameter]) -> int:
    """Number of values in ``params``."""
    return sum(p.numel() for p in params)


def matched_decoder(
    speech: SpeechTower, target: int, layers: int = 2, heads: int = 4, dropout: float = 0.1
) -> encdec.EncDecConfig:
    """The character decoder (``layers`` layers, ff = 2 x width) whose trainable count is closest to ``target``."""
    best: tuple[int, encdec.EncDecConfig] | None = None
    for width in range(heads * 4, 1025, heads * 4):
        config = encdec.EncDecConfig(width=width, heads=heads, decoder_layers=layers, ff=2 * width, dropout=dropout)
        with torch.device("meta"):  # sizes only: nothing is allocated
            n = count(SpeechOnlyAsr(SpeechTower(speech.config), config).trainable())
        if best is None or abs(n - target) < abs(best[0] - target):
            best = (n, config)
    assert best is not None
    return best[1]


def train_baseline(
    speech: SpeechTower,
    corpus: asr.AsrCorpus,
    config: encdec.EncDecConfig,
    steps: int = 300,
    seed: int = 0,
    batch_size: int = 16,
    lr: float = 2e-3,
    tune_speech: bool = False,
    progress: Callable[[int], None] | None = None,
) -> tuple[SpeechOnlyAsr, list[float]]:
    """Train the speech-only baseline's decoder from scratch on the same data, batches and steps as the Zipper."""
    from .training import train_steps, unwrap

    train = _train_split(corpus)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = SpeechOnlyAsr(speech, config, tune_speech)
    tokenizer = model.tokenizer

    def tokens(texts):
        inputs, targets = encdec.token_batch(list(texts), tokenizer, config.max_len)
        return inputs, targets.masked_fill(targets == asr.PAD, IGNORE)

    model.train()
    loss_fn = _teacher_forced(model, corpus, train, rng, batch_size, tokens)
    losses = train_steps(model, model.trainable(), loss_fn, steps, lr=lr, clip=1.0, progress=progress)
    return unwrap(model).cpu().eval(), losses


# ---- evaluation -----------------------------------------------------------------------------


def evaluate(model: nn.Module, corpus: asr.AsrCorpus, split: str = "test", batch_size: int = 32) -> dict:
    """``{"cer", "references", "hypotheses"}`` of greedy transcriptions of one split (Zipper, baseline or tower)."""
    chosen = corpus.indices(split)
    refs = [corpus.texts[i] for i in chosen]
    if isinstance(model, ZipperModel):
        hyps = []
        for start in range(0, len(chosen), batch_size):
            part = chosen[start : start + batch_size]
            hyps += [model.tokenizer.decode(ids) for ids in model.greedy_batch([corpus.features[i] for i in part])]
    else:
        hyps = [model.transcribe(corpus.features[i][None]) for i in chosen]
    return {"cer": asr.cer(refs, hyps), "references": refs, "hypotheses": hyps}


@torch.no_grad()
def text_perplexity(model: ZipperModel, texts: Sequence[str], batch_size: int = 32) -> float:
    """Perplexity of the text tower alone on ``BOS + text + EOS`` (the Zipper's prompt format), every token scored."""
    total, counted = 0.0, 0
    for start in range(0, len(texts), batch_size):
        inputs, targets = token_batch(
            list(texts[start : start + batch_size]), model.tokenizer, model.config.max_len, model.bos_id, model.eos_id
        )
        logits = model.decode(None, inputs)[0]
        loss = nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).double(), targets.reshape(-1), ignore_index=IGNORE, reduction="sum"
        )
        total += float(loss)
        counted += int((targets != IGNORE).sum())
    return math.exp(total / counted)


# ---- save and load --------------------------------------------------------------------------


def check_save_folder(folder: str | Path) -> Path:
    """The weights path of ``folder``, refused in one line when saving there would overwrite what is not a Zipper's."""
    from . import tagged

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ZipperError(f"{folder} is a file; give a folder to save the Zipper into")
    path = folder / WEIGHTS
    tagged.check_writable(path, FORMAT, ZipperError)
    return path


def save(model: ZipperModel, folder: str | Path) -> Path:
    """Write ``folder/model.safetensors``: speech tower and blocks, format tag, configs and the text tower's identity.

    A ``model.safetensors`` already in the folder is overwritten only when it is a Zipper's.
    """
    from . import tagged

    folder = Path(folder)
    path = check_save_folder(folder)
    folder.mkdir(parents=True, exist_ok=True)
    trained = {k: v for k, v in model.state_dict().items() if not k.startswith("text.")}
    tagged.write(
        path, trained, FORMAT, error=ZipperError, config=asdict(model.config), speech=asdict(model.speech.config),
        text_tower=model.text_identity,
    )  # fmt: skip
    return folder


def load(folder: str | Path, text_tower: Any = None) -> ZipperModel:
    """The Zipper saved by :func:`save`, in eval mode, zipped into its text tower again.

    ``text_tower`` (a :class:`crossedge.core.sources.LoadedModel`, or anything with ``model``
    and ``tokenizer``) replaces loading the recorded tower by name; either way the tower must
    match the one the Zipper was trained with.
    """
    from . import tagged

    path = Path(folder) / WEIGHTS
    tensors, meta = tagged.read(path, FORMAT, "Zipper model", ZipperError)
    try:
        config = tagged.dataclass_config(ZipperConfig, json.loads(meta["config"]))
        speech_config = tagged.dataclass_config(SpeechTowerConfig, json.loads(meta["speech"]))
        identity = json.loads(meta["text_tower"])
        name = identity["name"]
    except (KeyError, ValueError, TypeError) as exc:
        raise ZipperError(f"Zipper model {path} is damaged ({type(exc).__name__}); save it again") from exc
    if text_tower is None:
        from crossedge.core.sources import load_model

        text_tower = load_model(name)
    found = tower_identity(text_tower.model, name)
    different = [k for k in ("model_type", "layers", "width", "vocab", "fingerprint") if found[k] != identity.get(k)]
    if different:
        shown = ", ".join(f"{k} {identity.get(k)!r} saved, {found[k]!r} given" for k in different)
        raise ZipperError(f"{path} was zipped into another text tower than {name!r} ({shown}); give the original tower")
    model = ZipperModel(text_tower.model, text_tower.tokenizer, SpeechTower(speech_config), config, name)
    try:
        missing, unexpected = model.load_state_dict(tensors, strict=False)
        missing = [k for k in missing if not k.startswith("text.")]
        if missing or unexpected:
            raise RuntimeError(f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    except RuntimeError as exc:
        raise ZipperError(f"Zipper model {path} is damaged ({exc}); save it again") from exc
    return model.eval()
