"""The loss contract: ranking and distillation losses over candidate lists.

A loss is registered as a class (``register_losses``); ``name`` and ``description``
are class attributes, options are ``__init__`` keyword arguments. An instance is
called as ``loss(scores, teacher=None, labels=None, mask=None)``:

- ``scores`` ``[B, K]``: the student's scores for B queries with K candidates each;
- ``teacher`` ``[B, K]``: a teacher's scores (distillation), never differentiated;
- ``labels`` ``[B, K]`` in {0, 1}: relevance labels;
- ``mask`` ``[B, K]``: true for real candidates when lists are padded.

It returns a scalar tensor, the mean over the batch, that does not depend on the
order of the queries in the batch or of the candidates in a list. ``needs_teacher``
says the loss reads only the teacher; otherwise it accepts labels or a teacher.
``exact_at_teacher`` says the loss is zero when the student's scores equal the teacher's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from crossedge.core.errors import CrossedgeError

if TYPE_CHECKING:
    import torch


class LossError(CrossedgeError):
    """A loss was called without the targets it needs, or with lists it cannot use."""


class Loss:
    """Base of ranking losses: ``loss(scores, teacher=None, labels=None, mask=None) -> scalar``."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    needs_teacher: ClassVar[bool] = True
    exact_at_teacher: ClassVar[bool] = False

    def __call__(
        self,
        scores: torch.Tensor,
        teacher: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The loss of ``scores`` against the teacher or the labels, a scalar tensor."""
        raise NotImplementedError

    def teacher_scores(self, teacher: torch.Tensor | None) -> torch.Tensor:
        """The teacher's scores detached as float32; a :class:`LossError` when none were given."""
        import torch

        if teacher is None:
            raise LossError(f"loss {self.name!r} distils a teacher: pass teacher scores of the same shape")
        return teacher.detach().to(torch.float32)

    @staticmethod
    def candidate_mask(scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The boolean mask of real candidates (all of them when ``mask`` is None)."""
        import torch

        return torch.ones_like(scores, dtype=torch.bool) if mask is None else mask.bool()
