"""The draft-length policy contract: how many tokens to draft before each verification.

A policy registers its class through ``register_draft_policies``; options are its
``__init__`` keyword arguments. The engine asks :meth:`DraftLengthPolicy.choose` before
each draft (and :meth:`DraftLengthPolicy.should_propose` before asking a cheap drafter)
and reports what happened through the ``observe`` methods: acceptance, the target's
verification time, and each drafter's drafting time (which the engine measures around
every ``propose`` call). A policy keeps what it learned across generations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar


class DraftLengthPolicy:
    """Base class: ``choose`` a length, then hear about the outcome through the ``observe`` methods."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: The longest draft this policy ever asks for.
    max_k: int = 16

    def choose(self, drafter: str, bucket: str, max_k: int) -> int:
        """How many tokens (0..max_k) of drafter ``drafter`` to verify next."""
        raise NotImplementedError

    def choose_nodes(self, drafter: str, bucket: str, scores: Sequence[float], max_k: int) -> int:
        """How many nodes (0..max_k) of a proposal to verify, given the drafter's ``scores``: its
        estimate of each node's chance of being accepted, in proposal order (a tree's best-first
        nodes, or a chain's positions). Called for cheap drafters whose drafts carry scores; the
        default ignores the scores and asks :meth:`choose`."""
        return self.choose(drafter, bucket, max_k)

    def should_propose(self, drafter: str, max_k: int) -> bool:
        """Whether to ask cheap drafter ``drafter`` for a proposal now. A cheap drafter is asked for
        its largest draft and cut afterwards (:meth:`choose` / :meth:`choose_nodes`), so its drafting
        time is spent before the policy sees the draft; a policy that has learned that the drafting
        costs more than it saves answers false and the engine moves on to the next drafter. The
        default always asks."""
        return True

    def observe_nodes(self, drafter: str, bucket: str, scores: Sequence[float], accepted: int) -> None:
        """A draft whose verified nodes had ``scores`` had ``accepted`` tokens accepted."""

    def observe_acceptance(self, drafter: str, bucket: str, drafted: int, accepted: int) -> None:
        """``accepted`` of ``drafted`` tokens survived verification."""

    def observe_verification(self, drafted: int, seconds: float) -> None:
        """One target forward verifying ``drafted`` tokens took ``seconds``."""

    def observe_drafting(self, drafter: str, drafted: int, seconds: float) -> None:
        """Drafter ``drafter`` spent ``seconds`` (measured by the engine) proposing ``drafted`` tokens."""

    def wants_calibration(self) -> bool:
        """Whether :meth:`calibrate` should be called before the next generation's first step."""
        return False

    def calibrate(self, measure: Callable[[int], float], max_k: int | None = None) -> None:
        """Learn from ``measure(k)``, which runs and times one verification of ``k`` dummy drafted tokens.

        ``max_k`` is the longest verification the engine can time now (the model's window minus
        the context); ``measure`` must not be called with more.
        """

    def describe(self) -> dict[str, Any]:
        """Learned state worth printing (empty for stateless policies)."""
        return {}
