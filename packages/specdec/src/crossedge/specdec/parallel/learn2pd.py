"""Learn2PD: a small filter network that predicts, per masked position, whether the model's current
guess already equals the token it would end up with, and decodes every position it trusts.

Training data comes from the model itself: held-apart training examples are decoded one token per
forward (``low-confidence:k=1``, the slowest and most careful schedule) and at every forward each
still-masked position is recorded with its features and its current top-1 token; the label is
whether that token equals the one the position finally received. The filter (an MLP over a few
per-position numbers: top-1 and top-2 probability, entropy, the end-of-text probability, where the
position sits and how much of its block is decoded, its neighbours' confidence) is trained with
binary cross-entropy and saved as safetensors.

The strategy ``learn2pd:filter=PATH,tau=0.5`` fills every masked position whose filter score passes
``tau`` (at least the best-scored one), and predicts the end of text: once it decodes end-of-text at
a position, the masked positions after it in the block become end-of-text too and the decoder stops
after that block (``stop_at_eos``), so padding costs no forwards.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from crossedge.core.contracts.unmasking import BlockState, UnmaskingError, UnmaskingStrategy

from . import tasks as T
from .decoding import decode
from .model import DiffusionLM
from .strategies import LowConfidenceRemasking

KIND = "learn2pd-filter"
FEATURES_VERSION = 1
FEATURE_NAMES = (
    "top1",
    "margin",
    "entropy",
    "eos",
    "position",
    "decoded",
    "step",
    "block",
    "left",
    "right",
)


def position_features(state: BlockState) -> torch.Tensor:
    """(L, F) features of every position of the block after one forward."""
    probs = torch.softmax(state.logits.float(), dim=-1)
    top = probs.topk(2, dim=-1).values
    vocab = probs.shape[-1]
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1) / math.log(vocab)
    n = probs.shape[0]
    masked = state.masked
    conf = torch.where(masked, top[:, 0], torch.ones_like(top[:, 0]))
    edge = torch.ones(1)
    left = torch.cat([edge, conf[:-1]])
    right = torch.cat([conf[1:], edge])
    columns = [
        top[:, 0],
        top[:, 0] - top[:, 1],
        entropy,
        probs[:, state.eos_id],
        torch.arange(n) / max(n - 1, 1),
        (~masked).float().mean().expand(n),
        torch.full((n,), state.step / n),
        torch.full((n,), state.block / max(state.blocks - 1, 1)),
        left,
        right,
    ]
    return torch.stack(columns, dim=-1)


class Filter(torch.nn.Module):
    """An MLP from position features to the logit of "this guess is final"."""

    def __init__(self, hidden: int = 32):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(len(FEATURE_NAMES), hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden, hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden, 1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).squeeze(-1)


class _Recorder(LowConfidenceRemasking):
    """One token per forward, recording every masked position's features and current guess."""

    def __init__(self) -> None:
        super().__init__(k=1)
        self.rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]] = []

    def step(self, state: BlockState) -> torch.Tensor:
        where = state.masked.nonzero().squeeze(1)
        guess = state.logits.argmax(-1)
        self.rows.append((position_features(state)[where], guess[where], where, state.block))
        return super().step(state)


def collect(
    model: DiffusionLM, examples: Sequence[T.TaskExample], progress: Callable[[], None] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and labels (guess equals the final token) from one-token-per-forward decoding."""
    xs, ys = [], []
    length = model.info.block_length
    for example in examples:
        recorder = _Recorder()
        out = decode(model, example.prompt, recorder)
        final = torch.tensor(out.tokens)
        for features, guess, where, block in recorder.rows:
            xs.append(features)
            ys.append((guess == final[block * length + where]).float())
        if progress is not None:
            progress()
    return torch.cat(xs), torch.cat(ys)


def train_filter(
    features: torch.Tensor, labels: torch.Tensor, *, epochs: int = 300, lr: float = 3e-3, seed: int = 0
) -> tuple[Filter, dict[str, float]]:
    """Fit a :class:`Filter` by full-batch binary cross-entropy; returns it and its training accuracy."""
    torch.manual_seed(seed)
    net = Filter()
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    for _ in range(epochs):
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(net(features), labels)
        loss.backward()
        optimizer.step()
    net.eval()
    with torch.no_grad():
        predicted = net(features) > 0
    accuracy = float((predicted == labels.bool()).float().mean())
    return net, {
        "loss": float(loss.detach()),
        "accuracy": accuracy,
        "rows": int(labels.numel()),
        "final": float(labels.mean()),
    }


def save_filter(net: Filter, path: Path | str, *, stats: dict[str, float], model: str) -> Path:
    """Write the filter as safetensors marked with its kind, feature version, checksum and training record."""
    from safetensors.torch import save

    from crossedge.core.cache import atomic_file

    from ..exit_head import weights_digest

    path = Path(path)
    if path.exists():
        try:
            read_filter_file(path)
        except UnmaskingError as exc:
            raise UnmaskingError(
                f"{path} exists and is not a Learn2PD filter crossedge wrote ({exc}); choose another --out"
            ) from exc
    state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    meta = {
        "format": "pt",
        "crossedge": KIND,
        "format_version": str(FEATURES_VERSION),
        "model": model,
        "features": json.dumps(FEATURE_NAMES),
        "weights_sha256": weights_digest(state),
        "training": json.dumps(stats),
    }
    with atomic_file(path) as out:
        out.write(save(state, metadata=meta))
    return path


def read_filter_file(path: Path | str) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(metadata, tensors) of a filter file; missing, damaged, foreign or other-version files are refused."""
    from ..exit_head import read_marked_safetensors

    return read_marked_safetensors(
        Path(path),
        marker=KIND,
        version=str(FEATURES_VERSION),
        what="Learn2PD filter",
        command="crossedge specdec train-filter",
        error=UnmaskingError,
    )


def load_filter(path: Path | str) -> Filter:
    """The filter :func:`save_filter` wrote to ``path``."""
    _, state = read_filter_file(path)
    net = Filter()
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise UnmaskingError(f"{path} does not hold a Learn2PD filter of this shape; retrain it") from exc
    net.eval()
    return net


class Learn2PD(UnmaskingStrategy):
    """Fill every masked position the trained filter calls final; end the text once end-of-text is decoded."""

    name = "learn2pd"
    description = "a trained filter decides which guesses are final; end-of-text ends the canvas (Learn2PD)"

    def __init__(self, filter: str = "", tau: float = 0.5, eot: bool = True):
        if not filter:
            raise UnmaskingError(
                "unmasking strategy 'learn2pd' needs filter=PATH (from 'crossedge specdec train-filter')"
            )
        if not 0.0 < tau < 1.0:
            raise UnmaskingError(f"unmasking strategy 'learn2pd': tau must be in (0, 1), got {tau}")
        self.filter = filter
        self.tau = tau
        self.eot = eot
        self._net = load_filter(filter)

    @property
    def stop_at_eos(self) -> bool:  # end-of-text prediction ends the canvas
        return self.eot

    @torch.no_grad()
    def step(self, state: BlockState) -> torch.Tensor:
        masked = state.masked
        score = torch.sigmoid(self._net(position_features(state)))
        score = torch.where(masked, score, torch.full_like(score, -1.0))
        chosen = masked & (score >= self.tau)
        if not bool(chosen.any()):
            chosen[score.argmax()] = True
        ids = state.logits.argmax(-1)
        out = torch.where(chosen, ids, state.tokens)
        if self.eot:
            ended = (out == state.eos_id).nonzero()
            if ended.numel():
                after = torch.arange(out.shape[0]) > int(ended[0])
                out = torch.where(after & (out == state.mask_id), torch.full_like(out, state.eos_id), out)
        return out
