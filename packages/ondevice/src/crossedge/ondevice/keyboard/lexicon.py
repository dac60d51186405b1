"""The lexicon: words with training-split counts, as a character trie the decoder walks in arrays."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping

import numpy as np

from crossedge.core import CrossedgeError

from .layout import ALPHABET

#: Index of the end-of-word symbol after the 26 letters, in every (.., 27) log-probability array.
END = len(ALPHABET)

_WORD = re.compile(r"[a-z]+")


def words_of(text: str) -> list[str]:
    """Lowercase runs of letters a-z: the words a letter keyboard types (digits and punctuation dropped)."""
    return _WORD.findall(text.lower())


class Lexicon:
    """Words and counts, with a trie: ``children[node, letter]`` (-1 for none), the word ending at a node,
    subtree counts, and each node's most frequent words below it (for completion candidates)."""

    def __init__(self, counts: Mapping[str, int], *, top: int = 8):
        bad = [w for w in counts if not w or _WORD.fullmatch(w) is None]
        if bad:
            raise CrossedgeError(f"lexicon words must be lowercase letters a-z, got {bad[:3]}")
        if not counts:
            raise CrossedgeError("the lexicon is empty; give it at least one word")
        # frequent words first, so word ids rank by count and the top-words lists need no sort key
        self.words: list[str] = sorted(counts, key=lambda w: (-counts[w], w))
        self.counts = np.array([counts[w] for w in self.words], dtype=np.float64)
        self.index = {w: i for i, w in enumerate(self.words)}
        self.top = top
        self._build_trie()

    @classmethod
    def from_words(cls, words: Iterable[str], *, min_count: int = 1, top: int = 8) -> Lexicon:
        """Count words and keep those seen at least ``min_count`` times."""
        counts = Counter(words)
        return cls({w: c for w, c in counts.items() if c >= min_count}, top=top)

    def _build_trie(self) -> None:
        children = [[-1] * len(ALPHABET)]
        depth, word_at = [0], [-1]
        nodes_of_word = []
        for wid, word in enumerate(self.words):
            node, path = 0, [0]
            for char in word:
                c = ord(char) - 97
                if children[node][c] < 0:
                    children[node][c] = len(children)
                    children.append([-1] * len(ALPHABET))
                    depth.append(depth[node] + 1)
                    word_at.append(-1)
                node = children[node][c]
                path.append(node)
            word_at[node] = wid
            nodes_of_word.append(path)
        n = len(children)
        self.children = np.array(children, dtype=np.int32)
        self.depth = np.array(depth, dtype=np.int32)
        self.word_at = np.array(word_at, dtype=np.int32)
        self.subtree_count = np.zeros(n)
        self.top_words = np.full((n, self.top), -1, dtype=np.int32)
        filled = np.zeros(n, dtype=np.int32)
        for wid, path in enumerate(nodes_of_word):  # ids ascend with rank, so the first `top` seen are the best
            for node in path:
                self.subtree_count[node] += self.counts[wid]
                if filled[node] < self.top:
                    self.top_words[node, filled[node]] = wid
                    filled[node] += 1
        self.end_count = np.where(self.word_at >= 0, self.counts[np.maximum(self.word_at, 0)], 0.0)

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: object) -> bool:
        return word in self.index

    @property
    def nodes(self) -> int:
        """Number of trie nodes (the root included)."""
        return len(self.depth)

    def node_of(self, prefix: str) -> int:
        """The trie node of ``prefix``, or -1 when no lexicon word starts with it."""
        node = 0
        for char in prefix:
            c = ord(char) - 97
            if not 0 <= c < len(ALPHABET):
                return -1
            node = int(self.children[node, c])
            if node < 0:
                return -1
        return node

    def unigram_logprob(self, word: str) -> float:
        """log P(word) under the training counts (-inf for a word not in the lexicon)."""
        wid = self.index.get(word)
        return float(np.log(self.counts[wid] / self.counts.sum())) if wid is not None else float("-inf")

    def prefix_table(self) -> np.ndarray:
        """(nodes, 27) log P(next letter or end | prefix) from the counts: chained to a word's end it is its
        unigram log-probability, so a decoder using it scores words by frequency alone."""
        with np.errstate(divide="ignore"):
            child_counts = np.where(self.children >= 0, self.subtree_count[np.maximum(self.children, 0)], 0.0)
            table = np.log(np.concatenate([child_counts, self.end_count[:, None]], axis=1))
            table -= np.log(self.subtree_count)[:, None]
        return table

    def to_dict(self) -> dict[str, int]:
        """word -> count, frequent first (the form saved in model files)."""
        return {w: int(c) for w, c in zip(self.words, self.counts, strict=True)}
