"""Example crossedge plugin: the ``last-ngram`` drafter, registered through the ``crossedge`` entry point."""

from __future__ import annotations

from collections.abc import Sequence

from crossedge.core import CrossedgeError, hookimpl
from crossedge.core.contracts.drafter import Draft, DraftContext, Drafter

__all__ = ["LastNgramDrafter", "register_drafters"]


class LastNgramDrafter(Drafter):
    """Propose what followed the most recent earlier occurrence of the context's last ``n`` tokens."""

    name = "last-ngram"
    description = "copy what followed the latest earlier occurrence of the last n tokens (example plugin)"
    #: Looking back costs next to nothing, so the engine may ask for the most and let the policy cut.
    cheap = True

    def __init__(self, n: int = 2, max_copy: int = 8):
        if n < 1 or max_copy < 1:
            raise CrossedgeError(f"last-ngram needs n >= 1 and max_copy >= 1, got n={n}, max_copy={max_copy}")
        self.n = n
        self.max_copy = max_copy
        self.proposals = 0

    def begin(self, context: DraftContext) -> None:
        """Start a generation; this drafter keeps nothing between runs but a proposal count."""
        super().begin(context)
        self.proposals = 0

    def propose(self, context_ids: Sequence[int], k: int) -> Draft:
        """At most ``min(k, max_copy)`` tokens that followed the last earlier match of the suffix."""
        self.proposals += 1
        take = min(k, self.max_copy)
        n = self.n
        if take <= 0 or len(context_ids) <= n:
            return Draft([])
        ids = list(context_ids)
        suffix = ids[-n:]
        # Scan backwards so the most recent occurrence wins; the suffix itself does not count.
        for start in range(len(ids) - n - 1, -1, -1):
            if ids[start : start + n] == suffix:
                return Draft(ids[start + n : start + n + take])
        return Draft([])


@hookimpl
def register_drafters(register):
    """Register the example drafter class."""
    register(LastNgramDrafter)
