"""Typing simulated users through a decoder: word error rate, keystroke savings, latency per keystroke."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from crossedge.core.bench import progress_bar

from .decoder import BeamDecoder
from .layout import QWERTY, KeyboardLayout
from .noise import TapSimulator


@dataclass
class TypingResult:
    """Per-word outcomes of one pass over the text, and every keystroke's decode time."""

    words: list[str] = field(default_factory=list)
    decoded: list[str] = field(default_factory=list)
    literal: list[str] = field(default_factory=list)
    in_lexicon: list[bool] = field(default_factory=list)
    keystrokes: list[int] = field(default_factory=list)
    saved: list[int] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)

    @property
    def word_error_rate(self) -> float:
        """Fraction of words whose top correction is not the word typed (unknown words count as errors)."""
        return float(np.mean([d != w for d, w in zip(self.decoded, self.words, strict=True)]))

    @property
    def in_lexicon_error_rate(self) -> float:
        """Word error rate over the words the lexicon holds."""
        pairs = [(d, w) for d, w, known in zip(self.decoded, self.words, self.in_lexicon, strict=True) if known]
        return float(np.mean([d != w for d, w in pairs])) if pairs else float("nan")

    @property
    def literal_error_rate(self) -> float:
        """Word error rate with no decoder: each tap read as its nearest key."""
        return float(np.mean([d != w for d, w in zip(self.literal, self.words, strict=True)]))

    @property
    def keystroke_savings(self) -> float:
        """Keystrokes saved by accepting the right completion when it first shows, over all keystrokes
        (taps plus the space or acceptance that ends each word)."""
        return float(sum(self.saved) / sum(self.keystrokes))

    @property
    def latency_median_s(self) -> float:
        """Median decode time per keystroke."""
        return statistics.median(self.latencies)

    @property
    def latency_p90_s(self) -> float:
        """90th percentile of the decode time per keystroke."""
        return float(np.quantile(self.latencies, 0.9))

    def summary(self) -> dict:
        """The metrics as a flat dict (milliseconds for latency)."""
        return {
            "words": len(self.words),
            "wer": self.word_error_rate,
            "wer_in_lexicon": self.in_lexicon_error_rate,
            "wer_literal": self.literal_error_rate,
            "oov_rate": 1.0 - float(np.mean(self.in_lexicon)),
            "keystroke_savings": self.keystroke_savings,
            "latency_median_ms": 1e3 * self.latency_median_s,
            "latency_p90_ms": 1e3 * self.latency_p90_s,
            "keystrokes": len(self.latencies),
        }


def type_messages(
    decoder: BeamDecoder,
    messages: Sequence[Sequence[str]],
    simulator: TapSimulator,
    *,
    k: int = 3,
    layout: KeyboardLayout = QWERTY,
    progress: bool = False,
) -> TypingResult:
    """Type every word as noisy taps; after each tap ask for ``k`` completions, at the space for the correction.

    A keystroke's latency is the decoder's time for it: tap plus completions, or correction plus taking the
    word into context. The user accepts the right completion as soon as it is among the ``k`` shown (one
    tap instead of the rest of the word and the space); the context is the text the user meant, as after
    fixing any wrong correction.
    """
    result = TypingResult()
    clock = time.perf_counter
    for message in progress_bar(messages, desc=f"typing ({decoder.scorer.name})", enabled=progress, unit="msg"):
        decoder.new_message()
        for word in message:
            taps = simulator.taps(word)
            accepted = None
            for i, point in enumerate(taps):
                start = clock()
                decoder.tap(point)
                shown = decoder.completions(k)
                result.latencies.append(clock() - start)
                if accepted is None and i + 1 < len(taps) and any(s.word == word for s in shown):
                    accepted = i + 1
            start = clock()
            best = decoder.finish(k)
            decoder.commit(word)
            result.latencies.append(clock() - start)
            result.words.append(word)
            result.decoded.append(best[0].word if best else "")
            result.literal.append("".join(layout.nearest_key(p) for p in taps))
            result.in_lexicon.append(word in decoder.lexicon)
            result.keystrokes.append(len(taps) + 1)
            result.saved.append(len(taps) - accepted if accepted is not None else 0)
    return result
