import random

import pytest

from crossedge.specdec import CopyDrafter
from crossedge.specdec.suffix_index import SuffixIndex, brute_force_longest_match


@pytest.mark.parametrize("latest", [False, True])
def test_matches_brute_force_on_random_sequences(latest):
    rng = random.Random(2 if latest else 0)
    for trial in range(60):
        alphabet = rng.choice([2, 3, 5, 20])
        tokens = [rng.randrange(alphabet) for _ in range(rng.randrange(1, 120))]
        index = SuffixIndex()
        for n, token in enumerate(tokens, start=1):
            index.append(token)
            found = index.latest_match() if latest else index.longest_match()
            assert found == brute_force_longest_match(tokens[:n], latest=latest), (trial, n)


def test_copy_drafter_copies_what_followed_the_earlier_occurrence():
    assert CopyDrafter(max_copy=3).propose([1, 2, 3, 4, 5, 9, 1, 2, 3], 8).tokens == [4, 5, 9]


def test_min_match_and_empty_sequence():
    assert SuffixIndex().longest_match() == (0, -1)
    assert SuffixIndex([7, 8, 7]).longest_match() == (1, 0)
    assert CopyDrafter(min_match=2).propose([7, 8, 7], 4).tokens == []
    assert CopyDrafter(min_match=1).propose([7, 8, 7], 4).tokens == [8, 7]


def test_latest_match_is_the_nearer_occurrence():
    index = SuffixIndex([1, 2, 3, 4, 9, 1, 2, 3, 5, 8, 1, 2, 3])
    assert index.longest_match() == (3, 2)
    assert index.latest_match() == (3, 7)


def _longest_suffix_in(text: list[int], pattern: list[int]) -> int:
    """Reference: the longest suffix of ``pattern`` that occurs in ``text``, by direct search."""
    for length in range(len(pattern), 0, -1):
        suffix = pattern[len(pattern) - length :]
        if any(text[i : i + length] == suffix for i in range(len(text) - length + 1)):
            return length
    return 0


def test_matcher_finds_the_longest_suffix_occurring_in_the_index():
    from crossedge.specdec.suffix_index import SuffixMatcher

    rng = random.Random(1)
    for trial in range(40):
        alphabet = rng.choice([2, 3, 6])
        text = [rng.randrange(alphabet) for _ in range(rng.randrange(1, 80))]
        pattern = [rng.randrange(alphabet) for _ in range(rng.randrange(1, 40))]
        matcher = SuffixMatcher(SuffixIndex(text))
        for n in range(1, len(pattern) + 1):
            matcher.feed(pattern[n - 1 : n])
            assert matcher.length == _longest_suffix_in(text, pattern[:n]), (trial, n)
            following = matcher.continuation(3)
            if matcher.length:
                # The continuation follows an occurrence of the matched suffix in the text.
                end = matcher.index._first_end[matcher.state]
                assert text[end - matcher.length + 1 : end + 1] == pattern[n - matcher.length : n]
                assert following == text[end + 1 : end + 4]


def test_matcher_continuation_stops_at_the_separator():
    from crossedge.specdec.suffix_index import SuffixMatcher

    matcher = SuffixMatcher(SuffixIndex([5, 6, 7, -1, 8, 9]))
    matcher.feed([5, 6])
    assert matcher.continuation(4, stop=-1) == [7]
