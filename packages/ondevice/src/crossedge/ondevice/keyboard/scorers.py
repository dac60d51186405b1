"""Character scorers the beam search asks for log P(next letter or end of word | prefix, context).

A scorer's state covers a batch of hypotheses; ``extend`` makes the states of children from parents.
:class:`CharModelScorer` runs the GRU (with the message's earlier words as context);
:class:`UnigramScorer` is the lexicon-only baseline: the trie's counts, whose product along a word is
its unigram frequency, so the same search then ranks by spatial likelihood plus frequency alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .layout import ALPHABET
from .lexicon import END, Lexicon
from .model import SPACE, CharModel, CharModelRuntime


@dataclass
class ScorerState:
    """States of B hypotheses: ``logp`` (B, 27) for their next symbol, ``data`` whatever the scorer carries."""

    logp: np.ndarray
    data: Any

    def __len__(self) -> int:
        return len(self.logp)


class CharScorer(Protocol):
    """What the decoder needs from a character scorer."""

    name: str

    def start(self) -> ScorerState:
        """State of one hypothesis: an empty word after the committed context."""

    def extend(self, state: ScorerState, parents: np.ndarray, chars: np.ndarray) -> ScorerState:
        """States of ``parents`` (indices into ``state``) extended by ``chars`` (letter ids; -1 keeps the parent)."""

    def suffix_logprob(self, state: ScorerState, parents: np.ndarray, suffixes: Sequence[str]) -> np.ndarray:
        """log P(suffix letters, then end of word | parent's prefix) per (parent, suffix) pair."""

    def commit(self, word: str) -> None:
        """Take ``word`` (and the space after it) into the context of the next word."""

    def reset(self) -> None:
        """Start a new message: forget the context."""


class UnigramScorer:
    """Lexicon-only scoring: P(next letter | prefix) from word counts in the trie, no context."""

    name = "lexicon-only"

    def __init__(self, lexicon: Lexicon):
        self.lexicon = lexicon
        self.table = lexicon.prefix_table()

    def start(self) -> ScorerState:
        nodes = np.zeros(1, dtype=np.int64)
        return ScorerState(self.table[nodes], nodes)

    def extend(self, state: ScorerState, parents: np.ndarray, chars: np.ndarray) -> ScorerState:
        nodes = state.data[parents]
        nodes = np.where(chars >= 0, self.lexicon.children[nodes, np.maximum(chars, 0)], nodes)
        return ScorerState(self.table[nodes], nodes)

    def suffix_logprob(self, state: ScorerState, parents: np.ndarray, suffixes: Sequence[str]) -> np.ndarray:
        out = np.empty(len(suffixes))
        for i, (parent, suffix) in enumerate(zip(parents, suffixes, strict=True)):
            node, total = int(state.data[parent]), 0.0
            for char in suffix:
                c = ord(char) - 97
                total += self.table[node, c]
                node = int(self.lexicon.children[node, c])
            out[i] = total + self.table[node, END]
        return out

    def commit(self, word: str) -> None:
        """No context: the next word's prior does not depend on this one."""

    def reset(self) -> None:
        """No context to forget."""


class CharModelScorer:
    """The character GRU (run by :class:`CharModelRuntime`), stepped once per expanded letter.

    Within a word the model's state is a function of the prefix typed, so states are memoized by
    prefix until the word is committed: the beams of the next tap and the completions' suffixes
    mostly reuse prefixes already computed, and only new ones cost a (batched) step.
    """

    name = "char-model"

    def __init__(self, model: CharModel):
        self.runtime = CharModelRuntime(model)
        self.reset()

    def reset(self) -> None:
        # a message starts as if after a space, the same way training windows see word starts
        logp, hidden = self.runtime.step(self.runtime.initial_state(), np.array([SPACE]))
        self._new_word(logp[0], hidden[:, 0])

    def _new_word(self, logp: np.ndarray, hidden: np.ndarray) -> None:
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {"": (logp, hidden)}

    def _compute(self, prefixes: Sequence[str]) -> None:
        """Fill the cache for ``prefixes`` whose one-letter-shorter parents are cached, in one batched step."""
        todo = sorted({p for p in prefixes if p not in self._cache})
        if not todo:
            return
        hidden = np.stack([self._cache[p[:-1]][1] for p in todo], axis=1)
        logp, hidden = self.runtime.step(hidden, np.array([ord(p[-1]) - 97 for p in todo]))
        for i, prefix in enumerate(todo):
            self._cache[prefix] = (logp[i], hidden[:, i])

    def _state(self, prefixes: list[str]) -> ScorerState:
        return ScorerState(np.stack([self._cache[p][0] for p in prefixes]), prefixes)

    def start(self) -> ScorerState:
        return self._state([""])

    def extend(self, state: ScorerState, parents: np.ndarray, chars: np.ndarray) -> ScorerState:
        prefixes = [
            state.data[p] + ALPHABET[c] if c >= 0 else state.data[p]
            for p, c in zip(parents.tolist(), chars.tolist(), strict=True)
        ]
        self._compute(prefixes)
        return self._state(prefixes)

    def suffix_logprob(self, state: ScorerState, parents: np.ndarray, suffixes: Sequence[str]) -> np.ndarray:
        starts = [state.data[p] for p in parents.tolist()]
        longest = max((len(s) for s in suffixes), default=0)
        for t in range(1, longest + 1):  # level by level, so each new prefix's parent is already there
            self._compute([start + s[:t] for start, s in zip(starts, suffixes, strict=True) if len(s) >= t])
        out = np.empty(len(suffixes))
        cache = self._cache
        for i, (start, suffix) in enumerate(zip(starts, suffixes, strict=True)):
            total, prefix = 0.0, start
            for char in suffix:
                total += float(cache[prefix][0][ord(char) - 97])
                prefix += char
            out[i] = total + float(cache[prefix][0][END])
        return out

    def commit(self, word: str) -> None:
        for t in range(1, len(word) + 1):  # mostly cached already: the beams went through these prefixes
            self._compute([word[:t]])
        logp, hidden = self.runtime.step(self._cache[word][1][:, None], np.array([SPACE]))
        self._new_word(logp[0], hidden[:, 0])


class MixedScorer:
    """Log-linear mix of the character model and the lexicon counts: ``weight`` * model + (1 - weight) * counts.

    Chained along a word it is weight * log P_model(word | context) + (1 - weight) * log P_unigram(word):
    the model brings context and spelling, the counts the exact frequencies of the lexicon's words.
    """

    name = "char-model+counts"

    def __init__(self, model: CharScorer, counts: UnigramScorer, weight: float = 0.5):
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"mix weight must be in [0, 1], got {weight}")
        self.model, self.counts, self.weight = model, counts, weight

    def _mix(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore"):  # -inf * 0 where a weight is 0
            return np.nan_to_num(self.weight * a, nan=0.0) + np.nan_to_num((1 - self.weight) * b, nan=0.0)

    def start(self) -> ScorerState:
        a, b = self.model.start(), self.counts.start()
        return ScorerState(np.where(np.isinf(b.logp), -np.inf, self._mix(a.logp, b.logp)), (a, b))

    def extend(self, state: ScorerState, parents: np.ndarray, chars: np.ndarray) -> ScorerState:
        a = self.model.extend(state.data[0], parents, chars)
        b = self.counts.extend(state.data[1], parents, chars)
        return ScorerState(np.where(np.isinf(b.logp), -np.inf, self._mix(a.logp, b.logp)), (a, b))

    def suffix_logprob(self, state: ScorerState, parents: np.ndarray, suffixes: Sequence[str]) -> np.ndarray:
        a = self.model.suffix_logprob(state.data[0], parents, suffixes)
        b = self.counts.suffix_logprob(state.data[1], parents, suffixes)
        return self._mix(a, b)

    def commit(self, word: str) -> None:
        self.model.commit(word)
        self.counts.commit(word)

    def reset(self) -> None:
        self.model.reset()
        self.counts.reset()
