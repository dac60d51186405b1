"""``bench --task deepfake``: two-view speech deepfake detection, every fusion block against each single view.

Data (:func:`build_corpus`): real sentences from this machine
(:func:`~crossedge.crossmodal.retrieval_bench.build_sentences`, 4-12 words) are spoken by
espeak-ng with varied voices, rates and pitch (bona fide); every bona fide utterance is then
passed through each spoofer of :mod:`crossedge.crossmodal.spoof` (WORLD, Griffin-Lim, a
32 kbit/s codec), so that every text is heard bona fide and spoofed. Every utterance, of either
class, then goes through the same channel: its level is normalized to one RMS and white noise
is added at a fixed SNR, so neither loudness nor the digital silence around espeak-ng's speech
tells the classes apart.

Splits are by text and by voice: a seeded third of the texts and three of the eight espeak-ng
voices are test-only, each text is spoken by one voice of its own side, so no test utterance
shares its sentence or its voice with any training utterance. Optionally one spoofer is held out
of training entirely (``held_out_spoofer``) and met only at test time.

Views: view A is spectral, LFCC frames (20 coefficients with deltas and delta-deltas, 10 ms)
stacked four at a time into 40 ms tokens; view B is the frozen :class:`~crossedge.crossmodal.ssl.MaskedSpeechEncoder`
pretrained per seed by masked prediction on the training audio (80-band log-mel) without
labels, every level of it concatenated (40 ms tokens).
Each configuration projects each view's tokens (layer norm, linear, GELU) to one width and
then either fuses both with a registered fusion block (``concat``, ``cross-attention``,
``mutual``, ``gated``) or mean-pools one view into a small MLP head (``view-a``, ``view-b``).
The score is the bona fide probability; the metric is the equal error rate on the test split
(:func:`crossedge.crossmodal.eer.eer`), mean +- std over seeds. The features are cached under
the crossedge cache as safetensors, keyed by every setting and espeak-ng's version.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from crossedge.core.errors import CrossedgeError

FORMAT = "crossedge-deepfake-corpus-v1"
BONA_FIDE = "bona-fide"
TOKEN_FRAMES = 4  # view A stacks this many 10 ms frames per token, matching the encoder's 40 ms tokens
TEST_VOICES = 3

#: fusion specs compared by the bench (one per registered block), view a = spectral, view b = SSL
DEFAULT_FUSIONS: tuple[str, ...] = (
    "concat:hidden=32",
    "cross-attention:width=32,heads=4",
    "mutual:width=32,heads=4",
    "gated:width=32",
)
SINGLE_VIEWS: tuple[str, ...] = ("view-a", "view-b")


class DeepfakeBenchError(CrossedgeError, ValueError):
    """A deepfake-task configuration that cannot run (too few texts or voices, an unknown spoofer)."""


@dataclass(frozen=True)
class CorpusConfig:
    """Everything that decides the corpus (and so its cache key)."""

    texts: int = 240
    min_words: int = 4
    max_words: int = 12
    test_fraction: float = 1 / 3
    spoofers: tuple[str, ...] = ("world", "griffin-lim", "codec")
    snr_db: float = 35.0
    rms: float = 0.05
    n_lfcc: int = 20
    n_mels: int = 80
    seed: int = 0


@dataclass
class Corpus:
    """Utterances as features plus their labels and split: ``label`` 1 = bona fide, 0 = spoofed."""

    lfcc: list[torch.Tensor]
    log_mel: list[torch.Tensor]
    label: np.ndarray
    kind: list[str]  # "bona-fide" or the spoofer's name
    text: list[str]
    voice: list[str]
    split: list[str]  # "train" or "test"
    info: dict[str, Any] = field(default_factory=dict)

    def indices(self, split: str, exclude_kind: str | None = None) -> np.ndarray:
        """Indices of one split, optionally without one spoofer's utterances."""
        return np.array(
            [i for i, s in enumerate(self.split) if s == split and self.kind[i] != exclude_kind], dtype=np.int64
        )


def plan_items(config: CorpusConfig, voices: Sequence[str] | None = None) -> tuple[list[tuple[str, Any]], list[str]]:
    """The bona fide ``(text, Voice)`` items and their split: texts and voices are each train-only or test-only."""
    from . import speech
    from .retrieval_bench import build_sentences

    voices = list(voices or speech.VOICES)
    if len(voices) < 2:
        raise DeepfakeBenchError(f"the voice split needs at least 2 voices; got {len(voices)}")
    n_test = int(round(config.texts * config.test_fraction))
    if n_test < 2 or config.texts - n_test < 2:
        raise DeepfakeBenchError(f"{config.texts} texts leave {n_test} for test; pass at least 6 texts")
    texts = build_sentences(config.texts, seed=config.seed, min_words=config.min_words, max_words=config.max_words)
    rng = np.random.default_rng([config.seed, 14])
    order = rng.permutation(len(texts))
    voice_order = [voices[i] for i in rng.permutation(len(voices))]
    n_test_voices = min(TEST_VOICES, len(voices) // 2) if len(voices) < 2 * TEST_VOICES else TEST_VOICES
    side_voices = {"test": voice_order[:n_test_voices], "train": voice_order[n_test_voices:]}
    items, splits = [], []
    for rank, i in enumerate(order):
        side = "test" if rank < n_test else "train"
        pool = side_voices[side]
        voice = speech.Voice(pool[rank % len(pool)], rate=int(rng.integers(130, 211)), pitch=int(rng.integers(25, 76)))
        items.append((texts[i], voice))
        splits.append(side)
    return items, splits


def channel(audio: np.ndarray, rms: float, snr_db: float, seed: int) -> np.ndarray:
    """``audio`` at one RMS level plus seeded white noise at ``snr_db`` (the same for every class)."""
    x = np.asarray(audio, dtype=np.float64)
    x = x * (rms / max(float(np.sqrt(np.mean(x**2))), 1e-8))
    noise = np.random.default_rng([seed, 3]).standard_normal(len(x)) * rms * 10 ** (-snr_db / 20)
    return np.clip(x + noise, -1.0, 1.0).astype(np.float32)


def _cache_path(config: CorpusConfig) -> Path:
    from crossedge.core.cache import cache_dir

    from .speech import espeak_version
    from .spoof import VERSION

    spec = {"format": FORMAT, "config": asdict(config), "espeak": espeak_version(), "spoofers": VERSION}
    key = json.dumps(spec, sort_keys=True)
    return cache_dir() / "deepfake" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.safetensors"


def _save_corpus(corpus: Corpus, path: Path) -> None:
    from safetensors.torch import save

    from crossedge.core.cache import atomic_file

    offsets = torch.tensor(np.concatenate([[0], np.cumsum([len(f) for f in corpus.lfcc])]), dtype=torch.int64)
    tensors = {
        "lfcc": torch.cat(corpus.lfcc).contiguous(),
        "log_mel": torch.cat(corpus.log_mel).contiguous(),
        "offsets": offsets,
        "label": torch.as_tensor(corpus.label, dtype=torch.int64),
    }
    rows = {"kind": corpus.kind, "text": corpus.text, "voice": corpus.voice, "split": corpus.split}
    meta = {"format": FORMAT, "rows": json.dumps(rows), "info": json.dumps(corpus.info)}
    with atomic_file(path) as handle:
        handle.write(save(tensors, metadata=meta))


def _load_corpus(path: Path) -> Corpus | None:
    """The cached corpus, or None when the file is missing, damaged or foreign (then it is built again)."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            if meta.get("format") != FORMAT:
                return None
            t = {k: handle.get_tensor(k) for k in ("lfcc", "log_mel", "offsets", "label")}
        rows = json.loads(meta["rows"])
        off = t["offsets"].tolist()
        n = len(off) - 1
        if off[-1] != len(t["lfcc"]) or off[-1] != len(t["log_mel"]) or any(len(rows[k]) != n for k in rows):
            return None
        return Corpus(
            lfcc=[t["lfcc"][off[i] : off[i + 1]].clone() for i in range(n)],
            log_mel=[t["log_mel"][off[i] : off[i + 1]].clone() for i in range(n)],
            label=t["label"].numpy().copy(),
            info=json.loads(meta["info"]),
            **rows,
        )
    except Exception:  # noqa: BLE001 (an unreadable cache file is rebuilt)
        return None


def build_corpus(
    config: CorpusConfig | None = None,
    *,
    speak: Callable[[list[tuple[str, Any]]], list[np.ndarray]] | None = None,
    voices: Sequence[str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> Corpus:
    """Bona fide and spoofed utterances of the planned texts as LFCC and log-mel features.

    ``speak`` turns ``(text, Voice)`` items into 16 kHz audio; by default espeak-ng
    (:func:`~crossedge.crossmodal.speech.synthesize_many`), and then the features are cached.
    ``progress`` is called once per bona fide utterance processed.
    """
    from . import speech
    from .spoof import get_spoofer

    config = config or CorpusConfig()
    spoofers = {name: get_spoofer(name) for name in config.spoofers}
    cache = speak is None and voices is None
    path = _cache_path(config) if cache else None
    if path is not None and (cached := _load_corpus(path)) is not None:
        if progress:
            progress(config.texts)
        return cached
    items, splits = plan_items(config, voices)
    audio = (speak or speech.synthesize_many)(items)
    corpus = Corpus([], [], np.zeros(0), [], [], [], [], info={"config": asdict(config)})
    labels = []
    for index, ((text, voice), side, bona) in enumerate(zip(items, splits, audio, strict=True)):
        versions = [(BONA_FIDE, np.asarray(bona, dtype=np.float32))]
        versions += [(name, fn(bona, config.seed * 100003 + index)) for name, fn in spoofers.items()]
        for rank, (kind, wave) in enumerate(versions):
            heard = channel(wave, config.rms, config.snr_db, seed=(config.seed * 100003 + index) * 8 + rank)
            corpus.lfcc.append(speech.lfcc(heard, n_lfcc=config.n_lfcc))
            corpus.log_mel.append(speech.log_mel(heard, n_mels=config.n_mels))
            corpus.kind.append(kind)
            corpus.text.append(text)
            corpus.voice.append(voice.voice)
            corpus.split.append(side)
            labels.append(1 if kind == BONA_FIDE else 0)
        if progress:
            progress(1)
    corpus.label = np.asarray(labels, dtype=np.int64)
    if path is not None:
        _save_corpus(corpus, path)
    return corpus


# ---------------------------------------------------------------------------------------------
# detectors


def stack_frames(frames: torch.Tensor, k: int = TOKEN_FRAMES) -> torch.Tensor:
    """(T, D) frames -> (ceil(T / k), k * D) tokens of k consecutive frames (the last one zero-padded)."""
    t, d = frames.shape
    pad = (-t) % k
    return torch.nn.functional.pad(frames, (0, 0, 0, pad)).reshape(-1, k * d)


class TokenProjection(nn.Module):
    """Layer norm, linear map to ``width`` and GELU, token by token."""

    def __init__(self, dim: int, width: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, width), nn.GELU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Detector(nn.Module):
    """Bona fide vs spoofed logit from view a, view b or both through a fusion block."""

    def __init__(self, configuration: str, dim_a: int, dim_b: int, width: int = 32, hidden: int = 32) -> None:
        super().__init__()
        from crossedge.core.contracts.fusion import build_fusion

        self.configuration = configuration
        self.uses = {"view-a": "a", "view-b": "b"}.get(configuration, "ab")
        if "a" in self.uses:
            self.project_a = TokenProjection(dim_a, width)
        if "b" in self.uses:
            self.project_b = TokenProjection(dim_b, width)
        if self.uses == "ab":
            self.fusion = build_fusion(configuration, width, width, 1)
        else:
            self.head = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, a: torch.Tensor, mask_a: torch.Tensor, b: torch.Tensor, mask_b: torch.Tensor) -> torch.Tensor:
        """(N,) logits of "bona fide"."""
        from crossedge.core.contracts.fusion import masked_mean

        if self.uses == "ab":
            return self.fusion(self.project_a(a), self.project_b(b), mask_a, mask_b).squeeze(-1)
        x, mask = (self.project_a(a), mask_a) if self.uses == "a" else (self.project_b(b), mask_b)
        return self.head(masked_mean(x, mask)).squeeze(-1)


def _batch(
    tokens: Sequence[torch.Tensor], rows: Sequence[int], starts: Sequence[int] | None = None, crop: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    from .speech import pad_batch

    if starts is None or crop is None:
        return pad_batch([tokens[i] for i in rows])
    return pad_batch([tokens[i][s : s + crop] for i, s in zip(rows, starts, strict=True)])


def train_detector(
    configuration: str,
    view_a: Sequence[torch.Tensor],
    view_b: Sequence[torch.Tensor],
    labels: np.ndarray,
    train: np.ndarray,
    steps: int,
    seed: int,
    batch: int = 32,
    lr: float = 2e-3,
    crop: int = 48,
) -> Detector:
    """A :class:`Detector` trained on the ``train`` rows with class-balanced batches (half bona fide).

    Each training example is a random window of ``crop`` tokens (the same window in both views,
    which share the 40 ms token rate); scoring uses whole utterances.
    """
    from .training import train_steps

    torch.manual_seed(seed)
    model = Detector(configuration, view_a[0].shape[-1], view_b[0].shape[-1])
    positives = train[labels[train] == 1]
    negatives = train[labels[train] == 0]
    if len(positives) == 0 or len(negatives) == 0:
        raise DeepfakeBenchError("the training split needs both bona fide and spoofed utterances")
    generator = torch.Generator().manual_seed(seed)
    half = batch // 2

    def loss_fn(prepared: nn.Module, _step: int) -> torch.Tensor:
        pos = positives[torch.randint(len(positives), (half,), generator=generator).numpy()]
        neg = negatives[torch.randint(len(negatives), (batch - half,), generator=generator).numpy()]
        rows = np.concatenate([pos, neg]).tolist()
        lengths = [min(len(view_a[i]), len(view_b[i])) for i in rows]
        starts = [int(torch.randint(max(1, n - crop + 1), (1,), generator=generator)) for n in lengths]
        a, mask_a = _batch(view_a, rows, starts, crop)
        b, mask_b = _batch(view_b, rows, starts, crop)
        target = torch.as_tensor(labels[rows], dtype=torch.float32)
        return nn.functional.binary_cross_entropy_with_logits(prepared(a, mask_a, b, mask_b), target)

    model.train()
    train_steps(model, list(model.parameters()), loss_fn, steps, lr=lr, weight_decay=1e-2, clip=1.0)
    return model.eval()


@torch.no_grad()
def bona_fide_scores(
    model: Detector, view_a: Sequence[torch.Tensor], view_b: Sequence[torch.Tensor], rows: np.ndarray, batch: int = 64
) -> np.ndarray:
    """The bona fide probability of every row."""
    out = []
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch].tolist()
        a, mask_a = _batch(view_a, chunk)
        b, mask_b = _batch(view_b, chunk)
        out.append(torch.sigmoid(model(a, mask_a, b, mask_b)).numpy())
    return np.concatenate(out)


def deltas(frames: torch.Tensor, width: int = 2) -> torch.Tensor:
    """Regression deltas over +-``width`` frames (edges repeated), the same shape as ``frames`` (T, D)."""
    padded = torch.cat([frames[:1].expand(width, -1), frames, frames[-1:].expand(width, -1)])
    t = len(frames)
    num = sum(k * (padded[width + k : width + k + t] - padded[width - k : width - k + t]) for k in range(1, width + 1))
    return num / (2 * sum(k * k for k in range(1, width + 1)))


def spectral_frames(lfcc: torch.Tensor) -> torch.Tensor:
    """LFCC with deltas and delta-deltas (T, 3 * n_lfcc), as the ASVspoof LFCC baselines use."""
    d = deltas(lfcc)
    return torch.cat([lfcc, d, deltas(d)], dim=-1)


def view_a_tokens(corpus: Corpus, train: np.ndarray | None = None) -> list[torch.Tensor]:
    """View A: LFCC + deltas standardized with the ``train`` rows' statistics, stacked into 40 ms tokens."""
    frames = [spectral_frames(f) for f in corpus.lfcc]
    rows = corpus.indices("train") if train is None else train
    stats = torch.cat([frames[i] for i in rows])
    mean, std = stats.mean(0), stats.std(0).clamp_min(1e-3)
    return [stack_frames((f - mean) / std) for f in frames]


def configuration_name(spec: str) -> str:
    """The fusion block's name of a spec (``cross-attention:width=32`` -> ``cross-attention``)."""
    return spec.split(":", 1)[0]


def deepfake_bench(
    corpus: Corpus | None = None,
    *,
    config: CorpusConfig | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    ssl_steps: int = 300,
    steps: int = 150,
    fusions: Sequence[str] = DEFAULT_FUSIONS,
    held_out_spoofer: str | None = None,
    encoder_width: int = 64,
    all_layers: bool = True,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """EER of every fusion block and each single view on unseen texts and voices; a JSON-ready dict."""
    from . import ssl
    from .eer import eer
    from .metrics import mean_std

    corpus = corpus if corpus is not None else build_corpus(config)
    if held_out_spoofer is not None and held_out_spoofer not in set(corpus.kind) - {BONA_FIDE}:
        spoofers = sorted(set(corpus.kind) - {BONA_FIDE})
        raise DeepfakeBenchError(f"cannot hold out spoofer {held_out_spoofer!r}; the corpus has {', '.join(spoofers)}")
    train = corpus.indices("train", exclude_kind=held_out_spoofer)
    test = corpus.indices("test")
    view_a = view_a_tokens(corpus, train)
    configurations = [*SINGLE_VIEWS, *fusions]
    names = [configuration_name(c) for c in configurations]
    per_seed: dict[str, list[float]] = {name: [] for name in names}
    per_kind: dict[str, dict[str, list[float]]] = {name: {} for name in names}
    ssl_loss: list[tuple[float, float]] = []
    kinds = sorted(set(corpus.kind) - {BONA_FIDE})
    for seed in seeds:
        encoder, losses = ssl.pretrain(
            [corpus.log_mel[i] for i in train],
            steps=ssl_steps,
            seed=seed,
            config=ssl.EncoderConfig(n_mels=corpus.log_mel[0].shape[-1], width=encoder_width),
        )
        ssl_loss.append((float(np.mean(losses[:10])), float(np.mean(losses[-10:]))))
        view_b = ssl.encode(encoder, corpus.log_mel, all_layers=all_layers)
        if progress:
            progress("ssl")
        for spec, name in zip(configurations, names, strict=True):
            model = train_detector(spec, view_a, view_b, corpus.label, train, steps, seed)
            scores = bona_fide_scores(model, view_a, view_b, test)
            labels = corpus.label[test]
            per_seed[name].append(eer(scores, labels))
            test_kind = np.array([corpus.kind[i] for i in test])
            for kind in kinds:
                keep = (test_kind == kind) | (labels == 1)
                per_kind[name].setdefault(kind, []).append(eer(scores[keep], labels[keep]))
            if progress:
                progress(name)

    def summary(values: list[float]) -> dict[str, float]:
        return dict(zip(("mean", "std"), mean_std(values), strict=True))

    results = {
        name: {
            "eer": {**summary(values), "per_seed": values},
            "eer_by_spoofer": {kind: summary(v) for kind, v in per_kind[name].items()},
            "views": {"view-a": "a", "view-b": "b"}.get(name, "a+b"),
        }
        for name, values in per_seed.items()
    }
    return {
        "task": "deepfake",
        "seeds": list(seeds),
        "ssl_steps": ssl_steps,
        "steps": steps,
        "configurations": dict(zip(names, configurations, strict=True)),
        "held_out_spoofer": held_out_spoofer,
        "spoofers": kinds,
        "train": _describe(corpus, train),
        "test": _describe(corpus, test),
        "ssl_loss_first_last": ssl_loss,
        "corpus": corpus.info,
        "results": results,
    }


def _describe(corpus: Corpus, rows: np.ndarray) -> dict[str, Any]:
    return {
        "utterances": int(len(rows)),
        "bona_fide": int(corpus.label[rows].sum()),
        "texts": len({corpus.text[i] for i in rows}),
        "voices": sorted({corpus.voice[i] for i in rows}),
    }


def format_table(result: dict[str, Any]) -> str:
    """A terminal table: one row per configuration, EER mean +- std over seeds (lower is better)."""
    train, test = result["train"], result["test"]
    kinds = result["spoofers"]
    lines = [
        f"deepfake: {train['utterances']} train / {test['utterances']} test utterances "
        f"({test['texts']} unseen texts, voices {', '.join(test['voices'])}), seeds {result['seeds']}"
        + (f", held-out spoofer {result['held_out_spoofer']}" if result["held_out_spoofer"] else ""),
        f"{'configuration':<18}{'views':>6}{'EER':>18}" + "".join(f"{k:>14}" for k in kinds),
    ]
    for name, row in result["results"].items():
        e = row["eer"]
        lines.append(
            f"{name:<18}{row['views']:>6}{e['mean']:>11.3f} +- {e['std']:.3f}"
            + "".join(f"{row['eer_by_spoofer'][k]['mean']:>14.3f}" for k in kinds)
        )
    return "\n".join(lines)


def plot(result: dict[str, Any], path: str | Path) -> Path:
    """A bar chart of EER (mean +- std over seeds) per configuration, written as PNG."""
    from .charts import chart

    names = list(result["results"])
    means = [result["results"][n]["eer"]["mean"] for n in names]
    stds = [result["results"][n]["eer"]["std"] for n in names]
    colors = ["#999999" if result["results"][n]["views"] != "a+b" else "#3366aa" for n in names]
    with chart(path, (7, 3.5)) as ax:
        ax.bar(names, means, yerr=stds, color=colors, capsize=4)
        ax.set_ylabel("EER (lower is better)")
        ax.set_title("two-view deepfake detection: single views (grey) vs fusion blocks")
        ax.tick_params(axis="x", rotation=20)
    return Path(path)


__all__ = ["Corpus", "CorpusConfig", "build_corpus", "deepfake_bench", "format_table", "plot"]
