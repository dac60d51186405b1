"""A small character-level GRU language model, and the model file that bundles it with its lexicon."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from crossedge.core import CrossedgeError

from .. import model_files
from .layout import ALPHABET
from .lexicon import END, Lexicon

#: Symbols the model reads and predicts: the 26 letters, then the space that ends a word.
VOCAB = len(ALPHABET) + 1
SPACE = END  # the end-of-word symbol and the space the model reads are the same id

FILE_FORMAT = "crossedge.ondevice.keyboard/1"


@dataclass(frozen=True)
class CharModelConfig:
    """Shape of the character model: embedding width, GRU width and depth."""

    embed: int = 24
    hidden: int = 192
    layers: int = 1

    def to_dict(self) -> dict[str, int]:
        """Plain-dict form (saved in model files)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CharModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys are refused."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise CrossedgeError(f"unknown character model option(s) {unknown}; valid: {sorted(names)}")
        return cls(**{k: int(v) for k, v in data.items()})


class CharModel(nn.Module):
    """P(next letter or space | every character typed so far in the message): the words before the current
    one are its context, the letters of the current word its prefix."""

    def __init__(self, config: CharModelConfig | None = None):
        super().__init__()
        self.config = config or CharModelConfig()
        c = self.config
        self.embed = nn.Embedding(VOCAB, c.embed)
        self.gru = nn.GRU(c.embed, c.hidden, num_layers=c.layers, batch_first=True)
        self.head = nn.Linear(c.hidden, VOCAB)

    def forward(self, ids: torch.Tensor, state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, T, 27) after each of ``ids`` (B, T), and the final state (layers, B, hidden)."""
        out, state = self.gru(self.embed(ids), state)
        return self.head(out), state

    def initial_state(self, batch: int = 1) -> torch.Tensor:
        """The state at the start of a message (zeros), shape (layers, batch, hidden)."""
        return torch.zeros(self.config.layers, batch, self.config.hidden)


def encode(text: str) -> list[int]:
    """Character ids of lowercase letters and spaces."""
    ids = []
    for char in text:
        if char == " ":
            ids.append(SPACE)
        else:
            c = ord(char) - 97
            if not 0 <= c < len(ALPHABET):
                raise CrossedgeError(f"{char!r} is not a letter or space; the character model reads only those")
            ids.append(c)
    return ids


@dataclass
class KeyboardModel:
    """What the device ships: the character model and the lexicon (words and counts) it decodes into."""

    char_model: CharModel
    lexicon: Lexicon
    record: dict[str, Any]

    def save(self, path: Path | str, *, force: bool = False) -> Path:
        """Write safetensors: weights as tensors, config, lexicon and training record in the metadata."""
        from safetensors.torch import save_file

        path = check_writable(path, force=force)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().contiguous() for k, v in self.char_model.state_dict().items()}
        metadata = {
            "format": FILE_FORMAT,
            "config": json.dumps(self.char_model.config.to_dict()),
            "lexicon": json.dumps(self.lexicon.to_dict()),
            "record": json.dumps(self.record, default=str),
        }
        save_file(tensors, str(path), metadata=metadata)
        return path

    @classmethod
    def load(cls, path: Path | str, config: CharModelConfig | None = None) -> KeyboardModel:
        """Read a file written by :meth:`save`; refuses other files and, given ``config``, other shapes."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        path = Path(path)
        if not path.is_file():
            raise CrossedgeError(f"no keyboard model at {path}: train one with `crossedge ondevice keyboard train`")
        metadata = model_files.file_metadata(path)
        if metadata is None or metadata.get("format") != FILE_FORMAT:
            raise CrossedgeError(f"{path} is not a keyboard model (no {FILE_FORMAT!r} metadata); train one first")
        with safe_open(str(path), framework="pt"):
            saved = CharModelConfig.from_dict(json.loads(metadata["config"]))
        if config is not None and config != saved:
            raise CrossedgeError(f"{path} holds a character model {saved.to_dict()}, not {config.to_dict()}")
        model = CharModel(saved)
        tensors = load_file(str(path))
        expected = model.state_dict()
        wrong = sorted(
            set(expected) ^ set(tensors)
            | {k for k in set(expected) & set(tensors) if expected[k].shape != tensors[k].shape}
        )
        if wrong:
            raise CrossedgeError(
                f"{path} does not match its own config {saved.to_dict()} (tensors {wrong[:3]}); retrain"
            )
        model.load_state_dict(tensors)
        lexicon = Lexicon(json.loads(metadata["lexicon"]))
        return cls(model.eval(), lexicon, json.loads(metadata.get("record", "{}")))


def check_writable(path: Path | str, *, force: bool = False) -> Path:
    """``path`` if a keyboard model may be written there: absent, one written here, or ``force``."""
    return model_files.check_writable(path, FILE_FORMAT, "a keyboard model", force=force)


class CharModelRuntime:
    """The trained GRU as numpy arrays for decoding: per-keystroke batches are tiny, so the first layer's
    input projection becomes a (27, 3H) table lookup and a step is one small matmul per layer, with no
    torch dispatch overhead. Matches :class:`CharModel` to float32 rounding."""

    def __init__(self, model: CharModel):
        gru, c = model.gru, model.config
        weights = {k: v.detach().numpy().astype(np.float32) for k, v in gru.named_parameters()}
        embed = model.embed.weight.detach().numpy().astype(np.float32)
        self.layers, self.hidden = c.layers, c.hidden
        self.input_table = embed @ weights["weight_ih_l0"].T + weights["bias_ih_l0"]  # (27, 3H)
        self.w_ih = [None] + [weights[f"weight_ih_l{i}"].T.copy() for i in range(1, c.layers)]
        self.b_ih = [None] + [weights[f"bias_ih_l{i}"] for i in range(1, c.layers)]
        self.w_hh = [weights[f"weight_hh_l{i}"].T.copy() for i in range(c.layers)]
        self.b_hh = [weights[f"bias_hh_l{i}"] for i in range(c.layers)]
        self.w_out = model.head.weight.detach().numpy().astype(np.float32).T.copy()
        self.b_out = model.head.bias.detach().numpy().astype(np.float32)

    def initial_state(self, batch: int = 1) -> np.ndarray:
        """Zeros (layers, batch, hidden)."""
        return np.zeros((self.layers, batch, self.hidden), dtype=np.float32)

    def step(self, state: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Read one symbol per row: log-probabilities (B, 27) of the next symbol and the new state."""
        H = self.hidden
        new = np.empty_like(state)
        x = None
        for layer in range(self.layers):
            gi = self.input_table[ids] if layer == 0 else x @ self.w_ih[layer] + self.b_ih[layer]
            h = state[layer]
            gh = h @ self.w_hh[layer] + self.b_hh[layer]
            r = _sigmoid(gi[:, :H] + gh[:, :H])
            z = _sigmoid(gi[:, H : 2 * H] + gh[:, H : 2 * H])
            n = np.tanh(gi[:, 2 * H :] + r * gh[:, 2 * H :])
            x = new[layer] = (1.0 - z) * n + z * h
        logits = x @ self.w_out + self.b_out
        logits -= logits.max(axis=1, keepdims=True)
        return logits - np.log(np.exp(logits).sum(axis=1, keepdims=True)), new


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (np.tanh(0.5 * x) + 1.0)  # tanh form: no overflow warnings for large |x|
