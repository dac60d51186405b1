"""Putting the parts together: train a keyboard model on the bundled texts, build decoders, type held-out text."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from crossedge.core import CrossedgeError

from .corpus import DEFAULT_SOURCES, KeyboardCorpus, load_corpus
from .decoder import BeamDecoder, DecoderConfig
from .model import CharModelConfig, KeyboardModel
from .noise import TapNoise, TapSimulator
from .scorers import CharModelScorer, CharScorer, MixedScorer, UnigramScorer
from .training import TrainConfig, TrainResult, train_char_model

#: Decoders by name: the lexicon-only baseline, the character model alone, and the model mixed with the counts.
SCORERS: tuple[str, ...] = ("lexicon-only", "char-model", "char-model+counts")

#: Weight of the character model in the mixed scorer (fixed beforehand, not tuned on the test text).
MIX_WEIGHT = 0.5


def train_keyboard(
    corpus: KeyboardCorpus,
    train_config: TrainConfig | None = None,
    model_config: CharModelConfig | None = None,
    *,
    min_count: int = 1,
    progress: bool = False,
) -> tuple[KeyboardModel, TrainResult]:
    """Lexicon and character model from the training split; held-out bits/char measured on the test split."""
    lexicon = corpus.lexicon(min_count=min_count)
    char_model, result = train_char_model(
        corpus.train, train_config, model_config, test_documents=corpus.test, progress=progress
    )
    record = {
        "sources": list(corpus.sources),
        "fraction": corpus.fraction,
        "min_count": min_count,
        "words": len(lexicon),
        "train": result.to_dict(),
    }
    return KeyboardModel(char_model, lexicon, record), result


def corpus_of(model: KeyboardModel) -> KeyboardCorpus:
    """The corpus split the model was trained on, rebuilt; refuses a model whose lexicon no longer matches it."""
    record = model.record
    corpus = load_corpus(tuple(record.get("sources", DEFAULT_SOURCES)), fraction=float(record.get("fraction", 0.8)))
    lexicon = corpus.lexicon(min_count=int(record.get("min_count", 1)))
    if lexicon.to_dict() != model.lexicon.to_dict():
        raise CrossedgeError(
            "the bundled texts give a different lexicon than this model's; held-out text may overlap its training "
            "text, so retrain the model with `crossedge ondevice keyboard train`"
        )
    return corpus


def make_scorer(model: KeyboardModel, kind: str, *, mix: float = MIX_WEIGHT) -> CharScorer:
    """A fresh scorer of one of :data:`SCORERS` for ``model``."""
    if kind == "lexicon-only":
        return UnigramScorer(model.lexicon)
    if kind == "char-model":
        return CharModelScorer(model.char_model)
    if kind == "char-model+counts":
        return MixedScorer(CharModelScorer(model.char_model), UnigramScorer(model.lexicon), mix)
    raise CrossedgeError(f"unknown scorer {kind!r}; choose one of {', '.join(SCORERS)}")


def make_decoder(model: KeyboardModel, kind: str, config: DecoderConfig | None = None) -> BeamDecoder:
    """A beam decoder over ``model``'s lexicon with the named scorer."""
    return BeamDecoder(model.lexicon, make_scorer(model, kind), config)


def decoder_config(noise: TapNoise, beam: int, **overrides) -> DecoderConfig:
    """Decoder settings whose touch model matches the simulated user's noise."""
    return DecoderConfig(beam=beam, sigma=noise.sigma, skip=noise.skip, extra=noise.extra, **overrides)


@dataclass(frozen=True)
class NoiseSetting:
    """A labelled simulated user."""

    label: str
    noise: TapNoise

    def simulator(self, seed: int) -> TapSimulator:
        """A fresh seeded simulator (the same taps for every decoder compared)."""
        return TapSimulator(self.noise, seed=seed)


@contextlib.contextmanager
def pinned_threads(count: int) -> Iterator[int]:
    """Pin torch's threads and, where threadpoolctl is installed, numpy's BLAS threads (the decode runtime's
    matmuls), so a timed keystroke uses exactly ``count`` threads."""
    from crossedge.core.bench import threads

    with threads(count) as active:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # numpy's BLAS then uses its own default
            yield active
            return
        with threadpool_limits(limits=count, user_api="blas"):
            yield active


def parse_widths(text: str) -> list[int]:
    """``"1,2,4"`` -> [1, 2, 4], refusing non-positive or non-integer widths."""
    try:
        widths = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError as exc:
        raise CrossedgeError(f"beam widths must be integers like 1,2,4,8; got {text!r}") from exc
    if not widths or widths[0] < 1:
        raise CrossedgeError(f"beam widths must be positive integers like 1,2,4,8; got {text!r}")
    return widths


def parse_words(text: str) -> Sequence[str]:
    """Words of a context string, lowercased letters only."""
    from .lexicon import words_of

    return words_of(text)


def evaluate_under_budget(
    model: KeyboardModel,
    corpus: KeyboardCorpus,
    noise: TapNoise,
    *,
    scorers: Sequence[str] = ("lexicon-only", "char-model+counts"),
    widths: Sequence[int] = (1, 2, 4, 8, 16, 32),
    budget_s: float = 2e-3,
    headroom: float = 0.8,
    words: int = 1000,
    calibration_words: int = 150,
    k: int = 3,
    seed: int = 0,
    threads: int = 1,
    progress: bool = False,
) -> tuple[list[dict], list[dict]]:
    """For each scorer: time every beam width on training-split text, take the widest whose p90 per keystroke
    fits ``headroom * budget_s`` (room for timing drift between calibration and use), then type ``words``
    held-out words and check the p90 there against ``budget_s``. Returns (result rows, cost rows)."""
    from .budget import choose_beam, measure_keystroke_costs
    from .evaluation import type_messages

    for kind in scorers:
        make_scorer(model, kind)  # an unknown name fails before any timing
    calibration = corpus.messages(limit=calibration_words, split="train")
    test = corpus.messages(limit=words)
    setting = NoiseSetting("", noise)
    rows, cost_rows = [], []
    with pinned_threads(threads):
        for kind in scorers:
            costs = measure_keystroke_costs(
                lambda width, kind=kind: make_decoder(model, kind, decoder_config(noise, width)),
                calibration,
                lambda: setting.simulator(seed + 1),
                widths,
                k=k,
            )
            cost_rows.extend({"scorer": kind, **c.to_row()} for c in costs)
            beam = choose_beam(costs, headroom * budget_s)
            result = type_messages(
                make_decoder(model, kind, decoder_config(noise, beam)),
                test,
                setting.simulator(seed),
                k=k,
                progress=progress,
            )
            summary = result.summary()
            rows.append(
                {
                    "scorer": kind,
                    "beam": beam,
                    **noise.to_dict(),
                    **summary,
                    "budget_ms": 1e3 * budget_s,
                    "headroom": headroom,
                    "within_budget": summary["latency_p90_ms"] <= 1e3 * budget_s,
                }
            )
    return rows, cost_rows
