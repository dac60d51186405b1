"""An incrementally built suffix automaton answering "where did the current suffix occur before?".

The copy drafter needs, after every accepted token, the longest suffix of the
token sequence that also ends at an earlier position, and what followed it
there. Rescanning the sequence each step costs O(n) per step; a suffix automaton
extends in amortized O(1) per appended token and answers the query in O(1): the
state of the whole sequence is new after each append (its end position set is
just the last position), so its suffix link is exactly the longest suffix that
also occurs earlier, and the link's first end position says where.
"""

from __future__ import annotations

from collections.abc import Iterable


class SuffixIndex:
    """Longest earlier occurrence of the current suffix of a growing token sequence."""

    __slots__ = ("tokens", "_length", "_link", "_next", "_first_end", "_last_end", "_recent_end", "_last")

    #: Appending refreshes the latest end position of at most this many states on the suffix-link
    #: chain (the longest match's state is always first). Shorter suffixes deeper in the chain may keep
    #: an older, still valid, end position: this bounds the work per token on very repetitive text.
    RECENT_DEPTH = 64

    def __init__(self, tokens: Iterable[int] = ()):
        self.tokens: list[int] = []
        # Parallel arrays keep states cheap: length of the longest string in the state,
        # suffix link, transitions, and the first position where the state's strings end.
        self._length: list[int] = [0]
        self._link: list[int] = [-1]
        self._next: list[dict[int, int]] = [{}]
        self._first_end: list[int] = [-1]
        self._last_end: list[int] = [-1]
        self._recent_end = -1
        self._last = 0
        self.extend(tokens)

    def __len__(self) -> int:
        return len(self.tokens)

    def extend(self, tokens: Iterable[int]) -> None:
        """Append tokens to the indexed sequence."""
        for token in tokens:
            self.append(int(token))

    def append(self, token: int) -> None:
        """Append one token (amortized constant time)."""
        length, link, nxt, first_end = self._length, self._link, self._next, self._first_end
        position = len(self.tokens)
        self.tokens.append(token)
        cur = len(length)
        length.append(length[self._last] + 1)
        link.append(-1)
        nxt.append({})
        first_end.append(position)
        last_end = self._last_end
        last_end.append(position)
        p = self._last
        while p != -1 and token not in nxt[p]:
            nxt[p][token] = cur
            p = link[p]
        if p == -1:
            link[cur] = 0
        else:
            q = nxt[p][token]
            if length[p] + 1 == length[q]:
                link[cur] = q
            else:
                clone = len(length)
                length.append(length[p] + 1)
                link.append(link[q])
                nxt.append(dict(nxt[q]))
                first_end.append(first_end[q])
                last_end.append(last_end[q])
                while p != -1 and nxt[p].get(token) == q:
                    nxt[p][token] = clone
                    p = link[p]
                link[q] = clone
                link[cur] = clone
        self._last = cur
        # Every state on cur's suffix-link chain now also ends here; its previous latest end, for the
        # first one (the longest earlier match), is the most recent earlier occurrence.
        state = link[cur]
        self._recent_end = last_end[state] if state > 0 else -1
        for _ in range(self.RECENT_DEPTH):
            if state <= 0:
                break
            last_end[state] = position
            state = link[state]

    def longest_match(self) -> tuple[int, int]:
        """``(match length, end position of its earliest earlier occurrence)``; ``(0, -1)`` if none."""
        if not self.tokens:
            return 0, -1
        state = self._link[self._last]
        if state <= 0:
            return 0, -1
        return self._length[state], self._first_end[state]

    def latest_match(self) -> tuple[int, int]:
        """``(match length, end position of its most recent earlier occurrence)``; ``(0, -1)`` if none."""
        match, _ = self.longest_match()
        return (match, self._recent_end) if match else (0, -1)


class SuffixMatcher:
    """The longest suffix of a streamed token sequence that occurs somewhere in a :class:`SuffixIndex`.

    Feeding a token walks the automaton (following suffix links on a mismatch), so each
    token costs amortized constant time, as in the classic longest-common-substring scan.
    The index must not grow while a matcher streams over it: call :meth:`reset` after it does.
    """

    __slots__ = ("index", "state", "length")

    def __init__(self, index: SuffixIndex):
        self.index = index
        self.state = 0
        self.length = 0

    def reset(self) -> None:
        """Forget the streamed tokens."""
        self.state = self.length = 0

    def feed(self, tokens: Iterable[int]) -> None:
        """Stream tokens; afterwards ``length`` is the longest suffix of everything fed that occurs in the index."""
        index = self.index
        state, length = self.state, self.length
        for token in tokens:
            token = int(token)
            while state and token not in index._next[state]:
                state = index._link[state]
                length = index._length[state]
            following = index._next[state].get(token)
            if following is None:
                state, length = 0, 0
            else:
                state, length = following, length + 1
        self.state, self.length = state, length

    def continuation(self, max_tokens: int, stop: int | None = None) -> list[int]:
        """What followed the earliest occurrence of the current match in the index, cut before ``stop``."""
        if self.length == 0 or max_tokens <= 0:
            return []
        end = self.index._first_end[self.state]
        tokens = self.index.tokens[end + 1 : end + 1 + max_tokens]
        if stop is not None and stop in tokens:
            tokens = tokens[: tokens.index(stop)]
        return tokens


def brute_force_longest_match(tokens: list[int], latest: bool = False) -> tuple[int, int]:
    """Reference answer for :meth:`SuffixIndex.longest_match` (``latest``: :meth:`latest_match`) by direct search."""
    n = len(tokens)
    for match in range(n - 1, 0, -1):
        suffix = tokens[n - match :]
        ends = range(n - 2, match - 2, -1) if latest else range(match - 1, n - 1)
        for end in ends:
            if tokens[end - match + 1 : end + 1] == suffix:
                return match, end
    return 0, -1
