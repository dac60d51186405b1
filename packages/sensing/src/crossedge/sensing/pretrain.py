"""ContraWiMAE-style pretraining: a masked channel autoencoder with a contrastive term between two views.

A window (T, C) of channel measurements (time x subcarriers or antennas) is cut into a grid
of ``patch_time x patch_channels`` patches. Pretraining hides ``mask_ratio`` of them,
encodes only the visible ones with a small Transformer, reconstructs the hidden ones with a
light decoder (MSE on the hidden patches only, as in MAE), and adds an InfoNCE term between
the pooled encodings of two views of every window (two different maskings, each after a
random amplitude scale and additive noise), so views of one channel meet and views of
different channels part (ContraWiMAE).

The :class:`ChannelEncoder` that comes out maps (N, T, C) -> (N, width) and has
``out_features``, so it can serve as a featurizer. :func:`evaluate_labels` measures it by a
linear probe and by fine-tuning, against the same architecture trained from scratch on the
same few labels with the same budget; :func:`run_pretrain_comparison` tabulates all three
over label fractions and seeds.

This module is imported only when pretraining is used (``plugin.py`` does not reference it),
so it imports torch at the top.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from crossedge.core.cache import atomic_file
from crossedge.core.contracts.algorithm import state_sha256
from crossedge.core.contracts.array_dataset import ArrayData, ArrayDataset, stratified_split
from crossedge.core.errors import CrossedgeError

FORMAT = "crossedge.channel-encoder/1"
#: how :func:`evaluate_labels` may use (or ignore) a pretrained encoder
MODES = ("linear-probe", "fine-tune", "scratch")

#: ``progress(step, losses)``: called after every pretraining step with its loss, reconstruction and contrastive terms
Progress = Callable[[int, dict[str, float]], None]


class PretrainError(CrossedgeError):
    """Pretraining options or windows are invalid, or a saved encoder cannot be loaded."""


@dataclass(frozen=True)
class PretrainConfig:
    """The masked autoencoder, its contrastive term and its optimizer; serializes to and from a plain dict."""

    #: fraction of patches hidden from the encoder in each view
    mask_ratio: float = 0.75
    #: patch extent along time and along channels (clamped to the window's own extent)
    patch_time: int = 4
    patch_channels: int = 4
    #: encoder width (the feature size), Transformer layers and attention heads
    width: int = 32
    depth: int = 2
    heads: int = 4
    #: the light decoder
    decoder_width: int = 32
    decoder_depth: int = 1
    #: weight of InfoNCE against the reconstruction MSE, and its softmax temperature
    contrastive_weight: float = 0.5
    temperature: float = 0.2
    #: views: amplitude scaled by a factor in [1 - scale_range, 1 + scale_range], noise in channel-std units
    scale_range: float = 0.2
    noise_std: float = 0.05
    lr: float = 1e-3
    weight_decay: float = 1e-4
    steps: int = 300
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self):
        problems = []
        if not 0.0 < self.mask_ratio < 1.0:
            problems.append(f"mask_ratio must lie strictly between 0 and 1, got {self.mask_ratio}")
        for name in ("patch_time", "patch_channels", "width", "depth", "heads", "decoder_width", "decoder_depth"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.width >= 1 and self.heads >= 1 and self.width % self.heads:
            problems.append(f"width {self.width} must be a multiple of heads {self.heads}")
        if self.temperature <= 0:
            problems.append(f"temperature must be positive, got {self.temperature}")
        if self.contrastive_weight < 0 or self.noise_std < 0 or not 0 <= self.scale_range < 1:
            problems.append("contrastive_weight and noise_std must be >= 0 and scale_range in [0, 1)")
        if self.lr <= 0 or self.weight_decay < 0:
            problems.append(f"lr must be positive and weight_decay >= 0, got {self.lr} and {self.weight_decay}")
        if self.steps < 0 or self.batch_size < 2:
            problems.append(
                f"steps must be >= 0 and batch_size >= 2 (InfoNCE needs negatives), "
                f"got {self.steps} and {self.batch_size}"
            )
        if problems:
            raise PretrainError(f"invalid pretraining config: {'; '.join(problems)}")

    def to_dict(self) -> dict[str, Any]:
        """The config as a plain JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> PretrainConfig:
        """Rebuild a config from :meth:`to_dict`; an unknown key is refused with the valid ones listed."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise PretrainError(f"unknown pretraining option(s) {', '.join(unknown)}; valid: {', '.join(known)}")
        return cls(**values)


# ---------------------------------------------------------------------------- networks


class ChannelEncoder(nn.Module):
    """Patch embedding, learned grid positions and a Transformer over the visible patches; pooled to ``width``.

    Inputs are standardized per channel with statistics fitted once on the pretraining
    windows and kept as buffers, never with statistics of the window itself, so a hidden
    patch cannot leak into the encoding of the visible ones.
    """

    def __init__(self, input_shape: Sequence[int], config: PretrainConfig | None = None):
        super().__init__()
        config = config or PretrainConfig()
        length, channels = (int(d) for d in input_shape)
        self.config = config
        self.input_shape = (length, channels)
        pt, pc = min(config.patch_time, length), min(config.patch_channels, channels)
        self.patch_shape = (pt, pc)
        self.grid = (math.ceil(length / pt), math.ceil(channels / pc))
        self.num_patches = self.grid[0] * self.grid[1]
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("std", torch.ones(channels))
        self.embed = nn.Linear(pt * pc, config.width)
        self.position = nn.Parameter(0.02 * torch.randn(1, self.num_patches, config.width))
        layer = nn.TransformerEncoderLayer(
            config.width,
            config.heads,
            2 * config.width,
            dropout=0.0,
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, config.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.width)
        self.out_features = config.width

    def fit_normalization(self, x: torch.Tensor) -> None:
        """Set the per-channel mean and standard deviation from windows ``x`` (N, T, C)."""
        flat = x.reshape(-1, x.shape[-1]).to(torch.float64)
        self.mean.copy_(flat.mean(dim=0).to(self.mean.dtype))
        # a constant channel keeps unit scale instead of dividing by zero
        self.std.copy_(flat.std(dim=0).clamp_min(1e-6).to(self.std.dtype))

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """Standardized windows (N, T, C) as patches (N, num_patches, patch_time * patch_channels), zero-padded."""
        n, length, channels = x.shape
        (pt, pc), (gt, gc) = self.patch_shape, self.grid
        x = F.pad(x, (0, gc * pc - channels, 0, gt * pt - length))
        return x.reshape(n, gt, pt, gc, pc).permute(0, 1, 3, 2, 4).reshape(n, gt * gc, pt * pc)

    def targets(self, x: torch.Tensor) -> torch.Tensor:
        """What the decoder reconstructs: the standardized patches of raw windows ``x``."""
        return self.patchify((x - self.mean) / self.std)

    def encode(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens (N, K, width) of the patches listed in ``keep`` (N, K) (every patch when None)."""
        self._check(x)
        tokens = self.embed(self.targets(x)) + self.position
        if keep is not None:
            # the hidden patches are dropped here, before any attention, so nothing of them reaches the output
            tokens = torch.gather(tokens, 1, keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
        return self.encoder(tokens)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """Mean over tokens, layer-normalized: (N, K, width) -> (N, width)."""
        return self.norm(tokens.mean(dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features (N, width) of windows (N, T, C), every patch visible."""
        return self.pool(self.encode(x))

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim != 3 or tuple(x.shape[1:]) != self.input_shape:
            raise PretrainError(
                f"the encoder takes windows (N, {self.input_shape[0]}, {self.input_shape[1]}), got {tuple(x.shape)}"
            )


class MaskedDecoder(nn.Module):
    """The light decoder: encoder tokens plus a shared mask token at the hidden positions, one block, a linear head."""

    def __init__(self, encoder: ChannelEncoder, config: PretrainConfig):
        super().__init__()
        width = config.decoder_width
        self.num_patches = encoder.num_patches
        self.project = nn.Linear(config.width, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.position = nn.Parameter(0.02 * torch.randn(1, self.num_patches, width))
        heads = config.heads if width % config.heads == 0 else 1
        layer = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, config.decoder_depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, encoder.patch_shape[0] * encoder.patch_shape[1])

    def forward(self, tokens: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Every patch (N, num_patches, patch size) predicted from the visible tokens (N, K, width) at ``keep``."""
        n = tokens.shape[0]
        projected = self.project(tokens)
        full = self.mask_token.expand(n, self.num_patches, -1)
        full = full.scatter(1, keep.unsqueeze(-1).expand(-1, -1, projected.shape[-1]), projected)
        return self.head(self.norm(self.blocks(full + self.position)))


# ---------------------------------------------------------------------------- the objective


def random_masking(
    n: int, num_patches: int, ratio: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(keep (n, K) sorted patch indices, hidden (n, num_patches) bool): a fresh random masking per window.

    At least one patch stays visible and at least one is hidden, whatever the ratio.
    """
    if num_patches < 2:
        raise PretrainError(
            "the window makes a single patch, so nothing can be masked; use smaller patch_time or patch_channels"
        )
    visible = min(num_patches - 1, max(1, round(num_patches * (1.0 - ratio))))
    order = torch.rand(n, num_patches, generator=generator).argsort(dim=1)
    keep = order[:, :visible].sort(dim=1).values
    hidden = torch.ones(n, num_patches, dtype=torch.bool)
    hidden.scatter_(1, keep, False)
    return keep, hidden


def augment(x: torch.Tensor, std: torch.Tensor, config: PretrainConfig, generator: torch.Generator) -> torch.Tensor:
    """A light view of raw windows: a random amplitude scale per window plus noise of ``noise_std`` * ``std``."""
    n = x.shape[0]
    scale = 1.0 + config.scale_range * (2.0 * torch.rand(n, 1, 1, generator=generator) - 1.0)
    noise = torch.randn(x.shape, generator=generator) * (config.noise_std * std)
    return x * scale + noise


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE: rows i of ``a`` and ``b`` are a positive pair, every other row of the other a negative."""
    a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    logits = a @ b.T / temperature
    target = torch.arange(len(a))
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def two_views(
    encoder: ChannelEncoder, x: torch.Tensor, config: PretrainConfig, generator: torch.Generator
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Two views of each window: for each, (augmented windows, keep, hidden, encoder tokens of the visible patches)."""
    views = []
    for _ in range(2):
        seen = augment(x, encoder.std, config, generator)
        keep, hidden = random_masking(len(x), encoder.num_patches, config.mask_ratio, generator)
        views.append((seen, keep, hidden, encoder.encode(seen, keep)))
    return views


def pretraining_losses(
    encoder: ChannelEncoder,
    decoder: MaskedDecoder,
    x: torch.Tensor,
    config: PretrainConfig,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """``loss`` = hidden-patch MSE (both views) + ``contrastive_weight`` * InfoNCE of the two pooled encodings."""
    views = two_views(encoder, x, config, generator)
    reconstruction = 0.0
    for seen, keep, hidden, tokens in views:
        error = (decoder(tokens, keep) - encoder.targets(seen)).pow(2).mean(dim=2)
        reconstruction = reconstruction + error[hidden].mean() / len(views)
    contrastive = info_nce(encoder.pool(views[0][3]), encoder.pool(views[1][3]), config.temperature)
    return {
        "loss": reconstruction + config.contrastive_weight * contrastive,
        "reconstruction": reconstruction,
        "contrastive": contrastive,
    }


def pretrain(
    x_unlabelled: np.ndarray | torch.Tensor,
    config: PretrainConfig | None = None,
    progress: Progress | None = None,
) -> ChannelEncoder:
    """Pretrain a :class:`ChannelEncoder` on unlabelled windows (N, T, C); one config and data, one set of weights.

    ``progress(step, losses)`` is called after every step (a CLI hangs its tqdm bar there).
    """
    config = config or PretrainConfig()
    x = _windows(x_unlabelled, "x_unlabelled")
    if len(x) < 2:
        raise PretrainError(f"pretraining needs at least 2 unlabelled windows (InfoNCE contrasts them), got {len(x)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        encoder = ChannelEncoder(x.shape[1:], config)
        decoder = MaskedDecoder(encoder, config)
    if encoder.num_patches < 2:
        raise PretrainError(
            f"a {tuple(x.shape[1:])} window makes a single patch, so nothing can be masked; "
            "use smaller patch_time or patch_channels"
        )
    encoder.fit_normalization(x)
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.AdamW(
        [*encoder.parameters(), *decoder.parameters()], lr=config.lr, weight_decay=config.weight_decay
    )
    warmup = max(1, config.steps // 10)

    def schedule(step: int) -> float:
        # linear warm-up, then cosine decay to a tenth: the short runs here are stable at a high rate only briefly
        if step < warmup:
            return (step + 1) / warmup
        done = (step - warmup) / max(1, config.steps - warmup)
        return 0.1 + 0.45 * (1.0 + math.cos(math.pi * min(done, 1.0)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    batch = min(config.batch_size, len(x))
    # batches walk through a shuffled order, so a batch never holds one window twice (a false negative for InfoNCE)
    order, cursor = torch.randperm(len(x), generator=generator), 0
    encoder.train()
    decoder.train()
    for step in range(config.steps):
        if cursor + batch > len(x):
            order, cursor = torch.randperm(len(x), generator=generator), 0
        losses = pretraining_losses(encoder, decoder, x[order[cursor : cursor + batch]], config, generator)
        cursor += batch
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        scheduler.step()
        if progress is not None:
            progress(step, {key: float(value.detach()) for key, value in losses.items()})
    encoder.eval()
    return encoder


# ---------------------------------------------------------------------------- saving


def save_encoder(encoder: ChannelEncoder, path: str | Path) -> Path:
    """Write the encoder's weights, config and input shape to one safetensors file, atomically, with a SHA-256."""
    from safetensors.torch import save

    state = {key: value.detach().cpu().clone().contiguous() for key, value in encoder.state_dict().items()}
    metadata = {
        "format": FORMAT,
        "config": json.dumps(encoder.config.to_dict(), sort_keys=True),
        "input_shape": json.dumps(list(encoder.input_shape)),
        "sha256": state_sha256(state),
    }
    path = Path(path)
    with atomic_file(path) as handle:
        handle.write(save(state, metadata=metadata))
    return path


def load_encoder(path: str | Path) -> ChannelEncoder:
    """Rebuild an encoder written by :func:`save_encoder`; a damaged or foreign file is a one-line error."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise PretrainError(f"no saved channel encoder at {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            state = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not a dict)
        if metadata.get("format") != FORMAT:
            raise ValueError(f"format {metadata.get('format')!r}, not {FORMAT!r}")
        config = PretrainConfig.from_dict(json.loads(metadata["config"]))
        input_shape = json.loads(metadata["input_shape"])
    except Exception as exc:  # safetensors raises its own types; a truncated header raises others
        reason = str(exc).splitlines()[0] if str(exc) else ""
        raise PretrainError(
            f"{path} is not a readable channel encoder ({type(exc).__name__}: {reason}); pretrain and save it again"
        ) from exc
    if metadata.get("sha256") != state_sha256(state):
        raise PretrainError(f"{path} does not match its recorded SHA-256: the file is damaged; save it again")
    encoder = ChannelEncoder(input_shape, config)
    try:
        encoder.load_state_dict(state)
    except RuntimeError as exc:
        raise PretrainError(f"{path} holds weights that do not fit its own config; save it again") from exc
    encoder.eval()
    return encoder


# ---------------------------------------------------------------------------- few labels


def sample_fraction(y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of ``fraction`` of each class's windows (rounded, at least one per class), seeded per class."""
    if not 0.0 < fraction <= 1.0:
        raise PretrainError(f"label fraction must lie in (0, 1], got {fraction}")
    y = np.asarray(y)
    chosen = []
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        rng = np.random.default_rng([int(seed), int(label)])
        count = max(1, int(round(fraction * len(members))))
        chosen.append(members[rng.permutation(len(members))[:count]])
    return np.sort(np.concatenate(chosen)).astype(np.int64) if chosen else np.zeros(0, np.int64)


def evaluate_labels(
    encoder: ChannelEncoder | None,
    x_train: np.ndarray | torch.Tensor,
    y_train: np.ndarray | torch.Tensor,
    x_test: np.ndarray | torch.Tensor,
    y_test: np.ndarray | torch.Tensor,
    fraction: float,
    mode: str = "linear-probe",
    seed: int = 0,
    *,
    config: PretrainConfig | None = None,
    steps: int = 200,
    lr: float = 1e-3,
    probe_lr: float = 1e-2,
    batch_size: int = 32,
) -> float:
    """Test accuracy after learning from ``fraction`` of the training labels (per class, at least one).

    ``linear-probe`` freezes ``encoder`` and trains a linear head (full batch, ``probe_lr``);
    ``fine-tune`` trains a copy of it with a head; ``scratch`` trains the same architecture
    (``encoder``'s config, else ``config``) from a random init, standardized with statistics of
    all of ``x_train`` (labels unused, as pretraining does), with the same labels, ``steps``
    and ``lr`` as ``fine-tune``. ``encoder`` itself is never modified.
    """
    if mode not in MODES:
        raise PretrainError(f"unknown evaluation mode {mode!r}; choose one of {', '.join(MODES)}")
    if encoder is None and mode != "scratch":
        raise PretrainError(f"mode {mode!r} needs a pretrained encoder; pass one, or use mode 'scratch'")
    if steps < 1 or batch_size < 1 or lr <= 0 or probe_lr <= 0:
        raise PretrainError("steps and batch_size must be >= 1 and the learning rates positive")
    x_train, x_test = _windows(x_train, "x_train"), _windows(x_test, "x_test")
    y_train, y_test = _labels(y_train, len(x_train), "y_train"), _labels(y_test, len(x_test), "y_test")
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    labelled = torch.from_numpy(sample_fraction(y_train.numpy(), fraction, seed))
    xs, ys = x_train[labelled], y_train[labelled]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 1_000_003 + MODES.index(mode))
        generator = torch.Generator().manual_seed(seed)
        if mode == "scratch":
            architecture = encoder.config if encoder is not None else (config or PretrainConfig())
            model = ChannelEncoder(x_train.shape[1:], architecture)
            model.fit_normalization(x_train)
        else:
            model = copy.deepcopy(encoder)
            model._check(x_train[:1])
        head = nn.Linear(model.out_features, num_classes)
        if mode == "linear-probe":
            model.eval()
            with torch.no_grad():
                features = model(xs)
            optimizer = torch.optim.Adam(head.parameters(), lr=probe_lr)
            for _ in range(steps):
                loss = F.cross_entropy(head(features), ys)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        else:
            model.train()
            optimizer = torch.optim.AdamW([*model.parameters(), *head.parameters()], lr=lr, weight_decay=1e-4)
            batch = min(batch_size, len(xs))
            for _ in range(steps):
                pick = torch.randperm(len(xs), generator=generator)[:batch]
                loss = F.cross_entropy(head(model(xs[pick])), ys[pick])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        model.eval()
        with torch.no_grad():
            predicted = torch.cat([head(model(part)).argmax(dim=1) for part in x_test.split(512)])
    return float((predicted == y_test).float().mean())


def run_pretrain_comparison(
    data: ArrayData | ArrayDataset,
    label_fractions: Sequence[float] = (0.01, 0.1),
    seeds: Sequence[int] = (0, 1, 2),
    config: PretrainConfig | None = None,
    *,
    steps: int = 200,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Pretrain on the training split's windows (labels unused), then tabulate accuracy per (mode, fraction).

    The training and test splits are ``data``'s ``train`` and ``test`` splits when it has
    both, otherwise a seeded stratified 70/30 split. Each seed pretrains its own encoder
    (``config`` with that seed) and draws its own labelled subset, so the spread covers both.
    Returns ``{"rows": [{"mode", "fraction", "labelled", "accuracy_mean", "accuracy_std",
    "accuracies"}, ...], "seeds", "label_fractions", "config", "train_windows",
    "test_windows", "pretrain_losses"}``; ``progress(message)`` hears each stage.
    """
    if isinstance(data, ArrayDataset):
        data = data.load()
    if not seeds:
        raise PretrainError("the comparison needs at least one seed")
    config = config or PretrainConfig()
    if "train" in data.splits and "test" in data.splits:
        train, test = data.split("train"), data.split("test")
    else:
        train, test = stratified_split(data.y, 0.7, seed=0)
    if not len(train) or not len(test):
        raise PretrainError(f"the comparison needs training and test windows, got {len(train)} and {len(test)}")
    x_train, y_train, x_test, y_test = data.x[train], data.y[train], data.x[test], data.y[test]
    accuracies: dict[tuple[str, float], list[float]] = {(m, float(f)): [] for m in MODES for f in label_fractions}
    labelled: dict[float, list[int]] = {float(f): [] for f in label_fractions}
    final_losses = []
    for seed in seeds:
        if progress is not None:
            progress(f"seed {seed}: pretraining on {len(train)} unlabelled windows")
        last: dict[str, float] = {}
        encoder = pretrain(x_train, replace(config, seed=int(seed)), lambda _, losses, last=last: last.update(losses))
        final_losses.append({"seed": int(seed), **last})
        for fraction in label_fractions:
            labelled[float(fraction)].append(len(sample_fraction(y_train, fraction, int(seed))))
            for mode in MODES:
                if progress is not None:
                    progress(f"seed {seed}: {mode} with {fraction:g} of the labels")
                accuracy = evaluate_labels(
                    None if mode == "scratch" else encoder,
                    x_train,
                    y_train,
                    x_test,
                    y_test,
                    fraction,
                    mode,
                    int(seed),
                    config=config,
                    steps=steps,
                    lr=config.lr,
                )
                accuracies[(mode, float(fraction))].append(accuracy)
    rows = []
    for (mode, fraction), values in accuracies.items():
        rows.append(
            {
                "mode": mode,
                "fraction": fraction,
                "labelled": float(np.mean(labelled[fraction])),
                "accuracy_mean": float(np.mean(values)),
                "accuracy_std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                "accuracies": values,
            }
        )
    return {
        "rows": rows,
        "seeds": [int(s) for s in seeds],
        "label_fractions": [float(f) for f in label_fractions],
        "config": config.to_dict(),
        "train_windows": int(len(train)),
        "test_windows": int(len(test)),
        "pretrain_losses": final_losses,
    }


def comparison_table(result: dict[str, Any]) -> str:
    """The rows of :func:`run_pretrain_comparison` as an aligned text table (accuracy mean +- std in %)."""
    lines = [f"{'mode':<13} {'labels':>7} {'windows':>8} {'accuracy':>16}"]
    for row in result["rows"]:
        accuracy = f"{100 * row['accuracy_mean']:.1f} +- {100 * row['accuracy_std']:.1f}"
        lines.append(f"{row['mode']:<13} {row['fraction']:>7.0%} {row['labelled']:>8.1f} {accuracy:>16}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- helpers


def _windows(x: np.ndarray | torch.Tensor, what: str) -> torch.Tensor:
    """Windows as a float32 tensor (N, T, C), refused with a one-line error when they are not."""
    tensor = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).to(torch.float32)
    if tensor.ndim != 3 or 0 in tensor.shape:
        raise PretrainError(f"{what} must be windows shaped (N, T, C) with none empty, got {tuple(tensor.shape)}")
    if not torch.isfinite(tensor).all():
        raise PretrainError(f"{what} holds NaN or infinite values")
    return tensor


def _labels(y: np.ndarray | torch.Tensor, n: int, what: str) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y).to(torch.int64)
    if tensor.shape != (n,) or (n and int(tensor.min()) < 0):
        raise PretrainError(f"{what} must be {n} non-negative class indices, got shape {tuple(tensor.shape)}")
    return tensor
