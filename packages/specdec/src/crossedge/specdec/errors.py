"""Errors raised by speculative decoding; each says what to change."""

from __future__ import annotations

from crossedge.core import CrossedgeError
from crossedge.core.contracts.drafter import NonFiniteLogitsError as CoreNonFiniteLogitsError


class SpecdecError(CrossedgeError):
    """A speculative-decoding request cannot be served as given."""


class PromptTooLongError(SpecdecError):
    """The prompt does not fit the model's context window."""


class NonFiniteLogitsError(SpecdecError, CoreNonFiniteLogitsError):
    """The model produced NaN or infinite logits, so no token can be chosen."""


def check_built_for(model: object, target: object, what: str, option: str) -> None:
    """Refuse, in one line, trained drafting parts (``what``) built from another model than the target."""
    if model is not target:
        raise SpecdecError(
            f"the {what} built for another model than the engine's target: build from the target, "
            f"or pass {option}=DIR to load for this target"
        )
