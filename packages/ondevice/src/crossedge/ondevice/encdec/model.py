"""The two students: an encoder-decoder (bidirectional encoder over the input, small causal decoder with
cross-attention) and a decoder-only model of the same parameter count, both on the teacher's vocabulary with
tied input/output embeddings so their logits line up with the teacher's token for token.

Both expose the same three verbs, so training, evaluation and timing never ask which one they hold:
``target_logits(inputs, targets)`` (teacher forcing), ``prefill(inputs)`` (read the input, predict the first
target token) and ``step(state, token)`` (one cached decode step).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from crossedge.core import CrossedgeError

from .. import model_files
from ..blocks import RMSNorm, Rotary, SwiGLU
from .layers import CrossAttention, KVBuffer, SelfAttention

KINDS = ("encdec", "decoder")
FILE_FORMAT = "crossedge.ondevice.return-encoder/1"
WHAT = "a return-encoder student"
TRAIN_COMMAND = "crossedge ondevice return-encoder train"


@dataclass(frozen=True)
class StudentConfig:
    """Shape of a student: ``kind`` (encdec or decoder), vocabulary (the teacher's), width, heads, encoder and
    decoder depth (a decoder-only student has no encoder), feed-forward width, and the decoder's start token."""

    kind: str = "encdec"
    vocab: int = 49152
    d_model: int = 192
    heads: int = 4
    encoder_layers: int = 6
    decoder_layers: int = 2
    mlp_hidden: int = 512
    start_id: int = 1
    rope_base: float = 10000.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise CrossedgeError(f"student kind must be one of {list(KINDS)}, got {self.kind!r}")
        if self.d_model % self.heads or (self.d_model // self.heads) % 2:
            raise CrossedgeError(f"d_model {self.d_model} must split into {self.heads} heads of even width")
        if self.kind == "encdec" and self.encoder_layers < 1:
            raise CrossedgeError(
                f"an encoder-decoder student needs at least one encoder layer, got {self.encoder_layers}"
            )
        if self.kind == "decoder" and self.encoder_layers:
            raise CrossedgeError(
                f"a decoder-only student has no encoder layers, got encoder_layers={self.encoder_layers}"
            )
        if self.decoder_layers < 1 or self.mlp_hidden < 1 or self.vocab < 2:
            raise CrossedgeError(f"student sizes must be positive (vocab at least 2): {self.to_dict()}")
        if not 0 <= self.start_id < self.vocab:
            raise CrossedgeError(f"start_id {self.start_id} is outside the vocabulary of {self.vocab}")

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (saved in model files)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StudentConfig:
        """Inverse of :meth:`to_dict`; unknown keys are refused with the valid ones listed."""
        types = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(data) - set(types))
        if unknown:
            raise CrossedgeError(f"unknown student option(s) {unknown}; valid: {sorted(types)}")
        coerce = {"str": str, "int": int, "float": float}
        return cls(**{k: coerce[types[k]](v) for k, v in data.items()})


class Block(nn.Module):
    """Pre-norm residual layer: self-attention, cross-attention (decoder of encdec only), SwiGLU."""

    def __init__(self, c: StudentConfig, *, causal: bool, cross: bool):
        super().__init__()
        self.attn_norm, self.attn = RMSNorm(c.d_model), SelfAttention(c.d_model, c.heads, causal=causal)
        self.cross_norm = RMSNorm(c.d_model) if cross else None
        self.cross = CrossAttention(c.d_model, c.heads) if cross else None
        self.mlp_norm, self.mlp = RMSNorm(c.d_model), SwiGLU(c.d_model, c.mlp_hidden)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: KVBuffer | None = None,
        memory_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """(B, T, dim) -> (B, T, dim)."""
        x = x + self.attn(self.attn_norm(x), cos, sin, cache)
        if self.cross is not None:
            x = x + self.cross(self.cross_norm(x), memory_kv)
        return x + self.mlp(self.mlp_norm(x))


@dataclass
class DecodeState:
    """What decoding keeps between steps: each causal layer's KV buffer and, for encdec, each decoder layer's
    cross-attention keys and values over the input (computed once by :meth:`Student.prefill`)."""

    caches: list[KVBuffer]
    memory_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    @property
    def position(self) -> int:
        """Positions the decoder has consumed."""
        return self.caches[0].length

    def nbytes(self) -> dict[str, int]:
        """Bytes held: self-attention KV, cross-attention KV over the input, and their total."""
        own = sum(c.nbytes() for c in self.caches)
        cross = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.memory_kv or [])
        return {"self_kv": own, "cross_kv": cross, "total": own + cross}


class Student(nn.Module):
    """Base of both students: the shared embedding (tied to the output head), rotary tables and final norm."""

    def __init__(self, config: StudentConfig):
        super().__init__()
        self.config = c = config
        self.embed = nn.Embedding(c.vocab, c.d_model)
        self.rotary = Rotary(c.d_model // c.heads, c.rope_base)
        self.norm = RMSNorm(c.d_model)
        nn.init.normal_(self.embed.weight, std=0.02)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Logits over the teacher's vocabulary (tied embeddings)."""
        return self.norm(x) @ self.embed.weight.T

    def _new_caches(self, layers: int, batch: int, capacity: int) -> list[KVBuffer]:
        c = self.config
        dtype = self.embed.weight.dtype
        return [KVBuffer(batch, c.heads, c.d_model // c.heads, capacity, dtype) for _ in range(layers)]

    def target_logits(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, vocab) predicting each of ``targets`` (B, T) from ``inputs`` (B, N) and the targets
        before it (teacher forcing)."""
        raise NotImplementedError

    def prefill(self, inputs: torch.Tensor, capacity: int = 64) -> tuple[DecodeState, torch.Tensor]:
        """Read ``inputs`` (B, N); the decode state (room for ``capacity`` new tokens) and the first token's
        logits (B, vocab)."""
        raise NotImplementedError

    def step(self, state: DecodeState, tokens: torch.Tensor) -> torch.Tensor:
        """Logits (B, vocab) after feeding ``tokens`` (B, 1) to the decoder, extending ``state``."""
        raise NotImplementedError


class EncoderDecoderStudent(Student):
    """Bidirectional encoder over the input; causal decoder over the output with cross-attention to it."""

    def __init__(self, config: StudentConfig):
        super().__init__(config)
        if config.kind != "encdec":
            raise CrossedgeError(f"EncoderDecoderStudent needs kind='encdec', got {config.kind!r}")
        self.encoder = nn.ModuleList(Block(config, causal=False, cross=False) for _ in range(config.encoder_layers))
        self.encoder_norm = RMSNorm(config.d_model)
        self.decoder = nn.ModuleList(Block(config, causal=True, cross=True) for _ in range(config.decoder_layers))

    def encode(self, inputs: torch.Tensor) -> torch.Tensor:
        """Encoder output (B, N, dim): every position sees the whole input."""
        x = self.embed(inputs)
        cos, sin = self.rotary.span(0, inputs.shape[1])
        for block in self.encoder:
            x = block(x, cos, sin)
        return self.encoder_norm(x)

    def memory_kv(self, memory: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each decoder layer's cross-attention keys and values over the encoder output."""
        return [block.cross.memory_kv(memory) for block in self.decoder]

    def _decode(self, tokens: torch.Tensor, memory_kv: list, caches: list[KVBuffer] | None, start: int) -> torch.Tensor:
        x = self.embed(tokens)
        cos, sin = self.rotary.span(start, tokens.shape[1])
        for i, block in enumerate(self.decoder):
            x = block(x, cos, sin, caches[i] if caches is not None else None, memory_kv[i])
        return self.head(x)

    def _starts(self, batch: int) -> torch.Tensor:
        return torch.full((batch, 1), self.config.start_id, dtype=torch.long)

    def target_logits(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """See :meth:`Student.target_logits`: the decoder reads the start token then ``targets[:, :-1]``."""
        kv = self.memory_kv(self.encode(inputs))
        return self._decode(torch.cat([self._starts(len(targets)), targets[:, :-1]], 1), kv, None, 0)

    def prefill(self, inputs: torch.Tensor, capacity: int = 64) -> tuple[DecodeState, torch.Tensor]:
        """Encode once, compute every decoder layer's cross K/V once, then decode the start token."""
        state = DecodeState(
            self._new_caches(self.config.decoder_layers, len(inputs), capacity), self.memory_kv(self.encode(inputs))
        )
        return state, self.step(state, self._starts(len(inputs)))

    def step(self, state: DecodeState, tokens: torch.Tensor) -> torch.Tensor:
        """See :meth:`Student.step`: the input is never read again, only its cached cross K/V."""
        return self._decode(tokens, state.memory_kv, state.caches, state.position)[:, -1]


class DecoderOnlyStudent(Student):
    """One causal stack over input then output, as the teacher is."""

    def __init__(self, config: StudentConfig):
        super().__init__(config)
        if config.kind != "decoder":
            raise CrossedgeError(f"DecoderOnlyStudent needs kind='decoder', got {config.kind!r}")
        self.blocks = nn.ModuleList(Block(config, causal=True, cross=False) for _ in range(config.decoder_layers))

    def _run(self, ids: torch.Tensor, caches: list[KVBuffer] | None, start: int, logits_from: int) -> torch.Tensor:
        x = self.embed(ids)
        cos, sin = self.rotary.span(start, ids.shape[1])
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, caches[i] if caches is not None else None)
        return self.head(x[:, logits_from:])  # the vocabulary projection only where logits are needed

    def target_logits(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """See :meth:`Student.target_logits`: one sequence, input then ``targets[:, :-1]``."""
        return self._run(torch.cat([inputs, targets[:, :-1]], 1), None, 0, inputs.shape[1] - 1)

    def prefill(self, inputs: torch.Tensor, capacity: int = 64) -> tuple[DecodeState, torch.Tensor]:
        """Run the input through every layer into the KV buffers; logits at its last position."""
        state = DecodeState(self._new_caches(self.config.decoder_layers, len(inputs), inputs.shape[1] + capacity))
        return state, self._run(inputs, state.caches, 0, inputs.shape[1] - 1)[:, -1]

    def step(self, state: DecodeState, tokens: torch.Tensor) -> torch.Tensor:
        """See :meth:`Student.step`: every layer attends over the whole input's KV again."""
        return self._run(tokens, state.caches, state.position, 0)[:, -1]


def build_student(config: StudentConfig) -> Student:
    """A fresh student of ``config`` (random init from torch's current seed)."""
    return (EncoderDecoderStudent if config.kind == "encdec" else DecoderOnlyStudent)(config)


def parameter_count(config: StudentConfig) -> int:
    """Parameters of a student of ``config`` (tied embedding counted once), counted on the meta device."""
    with torch.device("meta"):
        model = build_student(config)
    return sum(p.numel() for p in model.parameters())


def parameter_split(config: StudentConfig) -> dict[str, int]:
    """Parameters by part: the shared embedding, the encoder (with its final norm) and the rest (decoder)."""
    with torch.device("meta"):
        model = build_student(config)
    embedding = model.embed.weight.numel()
    encoder = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("encoder.", "encoder_norm.")))
    total = sum(p.numel() for p in model.parameters())
    return {"embedding": embedding, "encoder": encoder, "decoder": total - embedding - encoder, "total": total}


def matched_decoder(encdec: StudentConfig) -> StudentConfig:
    """A decoder-only config with as many layers as ``encdec`` has in all, its feed-forward width solved so the
    two parameter counts are the nearest possible (the count is linear in that width)."""
    if encdec.kind != "encdec":
        raise CrossedgeError(f"matched_decoder takes an encdec config, got kind={encdec.kind!r}")
    target = parameter_count(encdec)
    plain = replace(
        encdec, kind="decoder", encoder_layers=0, decoder_layers=encdec.encoder_layers + encdec.decoder_layers
    )
    base = parameter_count(plain)
    per_unit = parameter_count(replace(plain, mlp_hidden=plain.mlp_hidden + 1)) - base
    return replace(plain, mlp_hidden=max(1, round(plain.mlp_hidden + (target - base) / per_unit)))


@torch.no_grad()
def teacher_projection(teacher_embedding: torch.Tensor, dim: int, *, std: float = 0.02, seed: int = 0) -> torch.Tensor:
    """The teacher's (vocab, D) input embedding projected on its ``dim`` leading principal directions and
    scaled to ``std``: both students start from the same token geometry as the teacher (extra columns random
    when ``dim`` exceeds D)."""
    weight = teacher_embedding.detach().float()
    centred = weight - weight.mean(0, keepdim=True)
    keep = min(dim, weight.shape[1])
    _, vectors = torch.linalg.eigh(centred.T @ centred)  # ascending eigenvalues: the last columns lead
    projected = centred @ vectors[:, -keep:].flip(1)
    projected = projected * (std / projected.std().clamp_min(1e-12))
    if keep < dim:
        extra = torch.randn(weight.shape[0], dim - keep, generator=torch.Generator().manual_seed(seed)) * std
        projected = torch.cat([projected, extra], 1)
    return projected


# ---- files ------------------------------------------------------------------------------------------------------


def check_writable(path: Path | str, *, force: bool = False) -> Path:
    """``path`` if a student may be written there: absent, one written here, or ``force``."""
    return model_files.check_writable(path, FILE_FORMAT, WHAT, force=force)


def save_student(model: Student, path: Path | str, *, record: dict | None = None, force: bool = False) -> Path:
    """Write safetensors: the weights, the config and a training record (never over a file we did not write)."""
    return model_files.save_with_config(model, path, FILE_FORMAT, WHAT, force=force, extra=record or {})


def load_student(path: Path | str, config: StudentConfig | None = None) -> tuple[Student, dict[str, Any]]:
    """A student and its record from a file of :func:`save_student`; refuses other files and, given ``config``,
    a file of another shape."""
    saved = StudentConfig.from_dict(model_files.saved_config(path, FILE_FORMAT, WHAT, TRAIN_COMMAND))
    if config is not None and config != saved:
        raise CrossedgeError(f"{path} holds a student {saved.to_dict()}, not the requested {config.to_dict()}")
    model = model_files.load_state_checked(build_student(saved), path)
    return model, model_files.saved_extra(path)
