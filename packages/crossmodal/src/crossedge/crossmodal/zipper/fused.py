"""The frozen text tower and the fused model: gated cross-attention blocks hooked onto its layers."""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import asr, encdec
from .common import IGNORE, TEXT_TOWER, ZipperError, feature_batch, train_split
from .speech_tower import SpeechTower


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


class OnSpeechTower(nn.Module):
    """A speech-to-text model reading a :class:`SpeechTower` held as ``self.speech``."""

    speech: SpeechTower

    @property
    def frames_per_position(self) -> int:
        """Input frames per speech position (the speech tower's stride)."""
        return self.speech.config.stride

    def memory_mask(self, frame_mask: torch.Tensor) -> torch.Tensor:
        """Which speech positions hold frames, from which input frames do (N, T) -> (N, S)."""
        return self.speech.memory_mask(frame_mask)


class ZipperModel(OnSpeechTower):
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
        from .. import speech

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


def teacher_forced(
    model: nn.Module, corpus: asr.AsrCorpus, train: list[int], rng: np.random.Generator, batch_size: int, tokens
) -> Callable[[nn.Module, int], torch.Tensor]:
    from ..training import device

    def loss_fn(prepared: nn.Module, step: int) -> torch.Tensor:
        chosen = rng.choice(train, size=min(batch_size, len(train)), replace=False)
        features, mask = feature_batch(corpus, chosen)
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
    from ..training import train_steps, unwrap

    train = train_split(corpus)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    c = model.config

    def tokens(texts):
        return token_batch(texts, model.tokenizer, c.max_len, model.bos_id, model.eos_id)

    model.train()
    loss_fn = teacher_forced(model, corpus, train, rng, batch_size, tokens)
    losses = train_steps(model, model.trainable(), loss_fn, steps, lr=lr, clip=1.0, progress=progress)
    return unwrap(model).cpu().eval(), losses
