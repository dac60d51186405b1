import random

from crossedge.specdec.suffix_index import SuffixIndex, brute_force_longest_match


def test_matches_brute_force_on_random_sequences():
    rng = random.Random(0)
    for trial in range(60):
        alphabet = rng.choice([2, 3, 5, 20])
        tokens = [rng.randrange(alphabet) for _ in range(rng.randrange(1, 120))]
        index = SuffixIndex()
        for n, token in enumerate(tokens, start=1):
            index.append(token)
            assert index.longest_match() == brute_force_longest_match(tokens[:n]), (trial, n)


def test_continuation_copies_what_followed_the_earlier_occurrence():
    index = SuffixIndex([1, 2, 3, 4, 5, 9, 1, 2, 3])
    tokens, match = index.continuation(max_tokens=3)
    assert match == 3
    assert tokens == [4, 5, 9]


def test_min_match_and_empty_sequence():
    assert SuffixIndex().longest_match() == (0, -1)
    index = SuffixIndex([7, 8, 7])
    assert index.continuation(4, min_match=2) == ([], 1)
    assert index.continuation(4, min_match=1) == ([8, 7], 1)
