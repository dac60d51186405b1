"""The example drafter passes the core drafter suite and registers under its name."""

import crossedge_example_drafter
import pytest
from crossedge_example_drafter import LastNgramDrafter

from crossedge.core import CrossedgeError, get_registry, registered
from crossedge.core.conformance.drafter import DrafterConformance
from crossedge.core.contracts.drafter import DraftContext


class TestLastNgramDrafter(DrafterConformance):
    def make_drafter(self, target):
        return LastNgramDrafter()


class TestLastNgramDrafterLongSuffix(DrafterConformance):
    def make_drafter(self, target):
        return LastNgramDrafter(n=4, max_copy=3)


def test_proposes_what_followed_the_latest_match():
    drafter = LastNgramDrafter(n=2)
    drafter.begin(DraftContext(target=None))
    context = [1, 2, 3, 4, 9, 1, 2, 5, 6, 7, 1, 2]
    assert drafter.propose(context, 3).tokens == [5, 6, 7]  # the later of the two earlier "1 2"
    assert drafter.propose(context, 1).tokens == [5]
    assert drafter.propose([1, 2, 3], 4).tokens == []
    assert drafter.proposals == 3


def test_options_are_checked():
    with pytest.raises(CrossedgeError, match="n >= 1"):
        LastNgramDrafter(n=0)


def test_registers_through_its_hook():
    with registered(crossedge_example_drafter, name="example-drafter-under-test"):
        entry = get_registry("drafter").entry("last-ngram")
    assert entry.obj is LastNgramDrafter and entry.plugin == "example-drafter-under-test"
