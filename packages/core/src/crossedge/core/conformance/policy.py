"""The conformance suite every draft-length policy runs by subclassing.

A new policy gets its tests by declaring one class::

    from crossedge.core.conformance.policy import DraftLengthPolicyConformance

    class TestMyPolicy(DraftLengthPolicyConformance):
        def make_policy(self):
            return MyPolicy()

The suite needs no model: it drives the policy with made-up acceptances and timings the
way an engine does and checks that every choice (scored drafts too) stays in ``[0, max_k]``, that calibration
never asks for a verification longer than the room it was given, that ``describe`` is
plain data, and that an unknown option is refused. Importing this module needs pytest.
"""

from __future__ import annotations

import inspect
import json
import random

import pytest

from ..contracts.policy import DraftLengthPolicy
from ..specs import Spec, SpecError, bind


class DraftLengthPolicyConformance:
    """Base class of policy test classes; subclasses implement :meth:`make_policy`."""

    def make_policy(self) -> DraftLengthPolicy:
        """A fresh policy."""
        raise NotImplementedError

    def _drive(self, policy: DraftLengthPolicy, steps: int, seed: int) -> list[tuple[int, int]]:
        """Run ``steps`` engine-like rounds; returns every (offered max_k, chosen k)."""
        rng = random.Random(seed)
        choices = []
        for _ in range(steps):
            drafter = rng.choice(["a", "b"])
            bucket = rng.choice(["", "m2", "m9+"])
            offered = rng.randint(0, 24)
            k = policy.choose(drafter, bucket, offered)
            choices.append((offered, k))
            policy.observe_drafting(drafter, k, 1e-4 * k)
            if k:
                accepted = rng.randint(0, k)
                policy.observe_verification(k, 0.01 + 0.002 * k)
                policy.observe_acceptance(drafter, bucket, k, accepted)
            else:
                policy.observe_verification(0, 0.01)
        return choices

    def test_choices_stay_within_what_was_offered(self) -> None:
        """``choose`` returns an int between 0 and both the offered ``max_k`` and the policy's ``max_k``."""
        policy = self.make_policy()
        assert isinstance(policy.max_k, int) and policy.max_k >= 1
        for offered, k in self._drive(policy, 300, seed=0):
            assert isinstance(k, int) and not isinstance(k, bool), k
            assert 0 <= k <= min(offered, policy.max_k), (offered, k, policy.max_k)

    def test_scored_drafts_stay_within_what_was_offered(self) -> None:
        """``should_propose`` answers a bool and ``choose_nodes`` at most the nodes offered, however drafting goes."""
        policy = self.make_policy()
        rng = random.Random(1)
        for _ in range(300):
            offered = rng.randint(0, 24)
            asked = policy.should_propose("a", offered)
            assert isinstance(asked, bool), asked
            if not asked:
                policy.observe_verification(0, 0.01)
                continue
            scores = sorted((rng.random() for _ in range(offered)), reverse=True)
            n = policy.choose_nodes("a", "", scores, offered)
            assert isinstance(n, int) and not isinstance(n, bool), n
            assert 0 <= n <= min(offered, policy.max_k), (offered, n, policy.max_k)
            # Drafting sometimes costs far more than it can save, so a policy that gates proposals does.
            policy.observe_drafting("a", n, rng.choice([1e-4, 0.05]))
            policy.observe_verification(n, 0.01 + 0.002 * n)
            policy.observe_nodes("a", "", scores[:n], rng.randint(0, n))

    def test_calibration_stays_inside_the_room_given(self) -> None:
        """``calibrate(measure, max_k)`` never times a verification longer than ``max_k``."""
        for room in (0, 3, 1000):
            policy = self.make_policy()
            if not policy.wants_calibration():
                continue
            asked: list[int] = []

            def measure(k: int, asked: list[int] = asked) -> float:
                asked.append(k)
                return 0.01 + 0.001 * k

            policy.calibrate(measure, room)
            assert all(0 <= k <= room for k in asked), (room, asked)

    def test_describe_is_plain_data(self) -> None:
        """What ``describe`` returns can be written as JSON (the CLI prints it)."""
        policy = self.make_policy()
        self._drive(policy, 50, seed=1)
        described = policy.describe()
        assert isinstance(described, dict)
        json.dumps(described)

    def test_refuses_unknown_options(self) -> None:
        """The class names itself and takes keyword options only: an unknown one is refused, not swallowed."""
        cls = type(self.make_policy())
        assert isinstance(cls.name, str) and cls.name, f"{cls.__name__} needs a non-empty class attribute 'name'"
        parameters = list(inspect.signature(cls.__init__).parameters.values())
        swallowing = [p.name for p in parameters if p.kind is inspect.Parameter.VAR_KEYWORD]
        assert not swallowing, f"{cls.__name__}.__init__ takes **{swallowing[0]}: mistyped options would vanish"
        with pytest.raises(SpecError, match="has no option 'no_such_option'"):
            bind(Spec(cls.name, {"no_such_option": "1"}), cls, kind="draft-length policy")

    def test_instances_do_not_share_state(self) -> None:
        """Driving one instance leaves a second one's choices unchanged (nothing learned lives on the class)."""
        first, second = self.make_policy(), self.make_policy()
        untouched = self._drive(self.make_policy(), 40, seed=2)
        self._drive(first, 200, seed=3)
        assert self._drive(second, 40, seed=2) == untouched
