"""Lexicon-constrained beam search over noisy taps, one keystroke at a time, with completions.

A hypothesis is a trie node (the prefix typed so far, always a prefix of a lexicon word), its score
(log spatial likelihood of the taps plus ``lm_weight`` times the scorer's log-probability of the
letters) and the scorer's state. Each tap either hits the next letter (Gaussian around its key), is a
stray tap (uniform over the keyboard, no letter), or follows a letter the user skipped. Hypotheses
that reach the same node are merged keeping the best (Viterbi), since a node fixes the prefix.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from crossedge.core import CrossedgeError

from .layout import QWERTY, KeyboardLayout
from .lexicon import END, Lexicon
from .scorers import CharScorer, ScorerState


@dataclass(frozen=True)
class DecoderConfig:
    """Search settings: beam width, score pruning, the touch model and how much the scorer counts."""

    beam: int = 8
    prune: float = 12.0
    sigma: float = 0.45
    skip: float = 0.0
    extra: float = 0.0
    lm_weight: float = 1.0
    candidates_per_beam: int = 8
    completion_beams: int = 4

    def __post_init__(self) -> None:
        if self.beam < 1:
            raise CrossedgeError(f"beam width must be at least 1, got {self.beam}")
        if self.sigma <= 0:
            raise CrossedgeError(f"decoder sigma must be positive (key widths), got {self.sigma}")

    def to_dict(self) -> dict:
        """Plain-dict form."""
        return asdict(self)


@dataclass
class Suggestion:
    """A lexicon word and its search score (higher is better)."""

    word: str
    score: float


class BeamDecoder:
    """Decodes one word at a time from taps: :meth:`tap` per touch, :meth:`finish` at the space, then :meth:`commit`."""

    def __init__(
        self,
        lexicon: Lexicon,
        scorer: CharScorer,
        config: DecoderConfig | None = None,
        layout: KeyboardLayout = QWERTY,
    ):
        self.lexicon, self.scorer, self.layout = lexicon, scorer, layout
        self.config = config or DecoderConfig()
        c = self.config
        self._log_hit = math.log(max(1e-12, 1.0 - c.skip - c.extra))
        self._log_stray = math.log(c.extra) - math.log(layout.area) if c.extra > 0 else None
        self._log_skip = math.log(c.skip) if c.skip > 0 else None
        self.reset_word()

    # -- one word -------------------------------------------------------------------------------------------
    def reset_word(self) -> None:
        """Forget the taps of the current word (the context stays)."""
        self.nodes = np.zeros(1, dtype=np.int64)
        self.scores = np.zeros(1)
        self.state: ScorerState = self.scorer.start()
        self.taps = 0

    def new_message(self) -> None:
        """Start a message: no context, no taps."""
        self.scorer.reset()
        self.reset_word()

    def commit(self, word: str) -> None:
        """The user accepted ``word``: it becomes context and the next word starts."""
        self.scorer.commit(word)
        self.reset_word()

    def tap(self, point: np.ndarray) -> None:
        """Advance every hypothesis by one touch point (x, y) in key widths."""
        c = self.config
        if self._log_skip is not None:
            self._add_skips()
        spatial = self.layout.log_likelihood(point, c.sigma)
        children = self.lexicon.children[self.nodes]  # (B, 26)
        hit = self.scores[:, None] + self._log_hit + spatial[None, :] + c.lm_weight * self.state.logp[:, :END]
        hit = np.where(children >= 0, hit, -np.inf)
        parents, chars = np.nonzero(np.isfinite(hit))
        cand_nodes, cand_scores = children[parents, chars].astype(np.int64), hit[parents, chars]
        stray = self._log_stray
        if stray is None and not len(cand_nodes):
            # more taps than any word under the beams has letters (an unknown or overlong word): rather than
            # fail, treat the tap as stray at a very low probability so the longest prefixes survive
            stray = math.log(1e-6) - math.log(self.layout.area)
        if stray is not None:  # the tap was stray: same prefix, no letter
            here = np.arange(len(self.nodes))
            parents = np.concatenate([parents, here])
            chars = np.concatenate([chars, np.full(len(here), -1)])
            cand_nodes = np.concatenate([cand_nodes, self.nodes])
            cand_scores = np.concatenate([cand_scores, self.scores + stray])
        keep = self._select(cand_nodes, cand_scores, c.beam)
        self.nodes, self.scores = cand_nodes[keep], cand_scores[keep]
        self.state = self.scorer.extend(self.state, parents[keep], chars[keep])
        self.taps += 1

    def _add_skips(self) -> None:
        """Add hypotheses with one more letter typed without a tap (the user skipped it)."""
        c = self.config
        children = self.lexicon.children[self.nodes]
        skip = self.scores[:, None] + self._log_skip + c.lm_weight * self.state.logp[:, :END]
        skip = np.where(children >= 0, skip, -np.inf)
        parents, chars = np.nonzero(np.isfinite(skip))
        if not len(parents):
            return
        here = np.arange(len(self.nodes))
        nodes = np.concatenate([self.nodes, children[parents, chars].astype(np.int64)])
        scores = np.concatenate([self.scores, skip[parents, chars]])
        parents = np.concatenate([here, parents])
        chars = np.concatenate([np.full(len(here), -1), chars])
        # scores do not need the new states, so select first and step the scorer once for the survivors
        keep = self._select(nodes, scores, 2 * c.beam)
        self.nodes, self.scores = nodes[keep], scores[keep]
        self.state = self.scorer.extend(self.state, parents[keep], chars[keep])

    def _select(self, nodes: np.ndarray, scores: np.ndarray, width: int) -> np.ndarray:
        """Indices of the best candidate per node, the top ``width`` of them, within ``prune`` of the best."""
        order = np.lexsort((-scores, nodes))  # by node, best first within a node
        first = np.ones(len(order), dtype=bool)
        first[1:] = nodes[order[1:]] != nodes[order[:-1]]
        unique = order[first]
        if len(unique) > width:
            unique = unique[np.argpartition(-scores[unique], width - 1)[:width]]
        unique = unique[np.argsort(-scores[unique], kind="stable")]
        return unique[scores[unique] >= scores[unique[0]] - self.config.prune]

    # -- answers -------------------------------------------------------------------------------------------
    def finish(self, k: int = 3) -> list[Suggestion]:
        """The top-``k`` lexicon words for the taps so far (the user pressed space)."""
        if self._log_skip is not None:
            self._add_skips()  # the last letter may have been skipped
        words = self.lexicon.word_at[self.nodes]
        ended = np.flatnonzero(words >= 0)
        if not len(ended):  # every beam is mid-word: the best completions are the best guesses
            return self.completions(k)
        scores = self.scores[ended] + self.config.lm_weight * self.state.logp[ended, END]
        order = np.argsort(-scores, kind="stable")[:k]
        return [Suggestion(self.lexicon.words[words[ended[i]]], float(scores[i])) for i in order]

    def completions(self, k: int = 3) -> list[Suggestion]:
        """The top-``k`` lexicon words that complete the best hypotheses (words the taps so far may begin)."""
        c = self.config
        beams = np.argsort(-self.scores, kind="stable")[: c.completion_beams]
        candidates = self.lexicon.top_words[self.nodes[beams], : c.candidates_per_beam]
        rows, cols = np.nonzero(candidates >= 0)
        parents, word_ids = beams[rows], candidates[rows, cols]
        depths = self.lexicon.depth[self.nodes[parents]]
        suffixes = [self.lexicon.words[w][d:] for w, d in zip(word_ids, depths, strict=True)]
        scores = self.scores[parents] + c.lm_weight * self.scorer.suffix_logprob(self.state, parents, suffixes)
        best: dict[int, float] = {}
        for w, s in zip(word_ids.tolist(), scores.tolist(), strict=True):
            if s > best.get(w, -math.inf):
                best[w] = s
        ranked = sorted(best.items(), key=lambda item: -item[1])[:k]
        return [Suggestion(self.lexicon.words[w], s) for w, s in ranked]

    def complete_prefix(self, prefix: str, k: int = 3) -> list[Suggestion]:
        """Top-``k`` lexicon words starting with the exact ``prefix`` (typed without noise), in context."""
        node = self.lexicon.node_of(prefix)
        if node < 0:
            return []
        self.reset_word()
        state, score = self.state, 0.0
        for char in prefix:
            letter = ord(char) - 97
            score += self.config.lm_weight * state.logp[0, letter]
            state = self.scorer.extend(state, np.zeros(1, dtype=np.int64), np.array([letter]))
        self.nodes, self.scores, self.state = np.array([node]), np.array([score]), state
        return self.completions(k)

    def decode(self, points: np.ndarray, k: int = 3) -> list[Suggestion]:
        """Top-``k`` words for a whole tap sequence (resets the current word first)."""
        self.reset_word()
        for point in np.asarray(points, dtype=np.float64).reshape(-1, 2):
            self.tap(point)
        return self.finish(k)
