"""Conformance suite for ranking losses: subclass :class:`LossConformance` and give a ``loss`` fixture.

::

    class TestMyLoss(LossConformance):
        @pytest.fixture
        def loss(self):
            return MyLoss()
"""

from __future__ import annotations

import math

import pytest

from crossedge.core.contracts.loss import Loss


def toy_batch():
    """Student scores, teacher scores, one-hot labels and a mask for 3 queries x 4 candidates (no ties)."""
    import torch

    scores = torch.tensor([[0.3, 1.2, -0.4, 0.8], [1.5, -0.2, 0.1, 0.6], [-0.7, 0.4, 0.9, 0.0]])
    teacher = torch.tensor([[2.0, 0.5, -1.0, 1.1], [0.2, 1.7, -0.3, 0.9], [1.3, -0.6, 0.4, 2.2]])
    labels = torch.zeros_like(scores)
    labels[torch.arange(3), teacher.argmax(1)] = 1.0
    mask = torch.tensor([[True, True, True, True], [True, True, True, False], [True, True, True, True]])
    return scores, teacher, labels, mask


class LossConformance:
    """Checks every loss passes: a finite scalar, descent, order invariance, masking and clear errors."""

    @pytest.fixture
    def loss(self) -> Loss:
        """The loss under test; a subclass must override this fixture."""
        raise NotImplementedError("a LossConformance subclass defines a `loss` fixture")

    def targets(self, loss: Loss, teacher, labels) -> dict:
        """The targets the loss is called with: the teacher when it needs one, otherwise the labels."""
        return {"teacher": teacher} if loss.needs_teacher else {"labels": labels}

    def test_is_a_loss_with_a_name(self, loss):
        assert isinstance(loss, Loss), f"{type(loss).__name__} does not subclass crossedge's Loss contract"
        assert isinstance(type(loss).name, str) and type(loss).name, "set `name` as a class attribute"
        assert isinstance(type(loss).description, str) and type(loss).description, "set `description`"

    def test_a_finite_non_negative_scalar(self, loss):
        scores, teacher, labels, mask = toy_batch()
        for kw in (self.targets(loss, teacher, labels), {"teacher": teacher}):
            value = loss(scores, mask=mask, **kw)
            assert value.ndim == 0, f"loss returned shape {tuple(value.shape)}, not a scalar"
            assert math.isfinite(value.item()) and value.item() >= 0.0, f"loss {value.item()}"

    def test_finite_for_extreme_scores(self, loss):
        scores, teacher, labels, mask = toy_batch()
        value = loss(scores * 1e4, mask=mask, **self.targets(loss, teacher * 1e4, labels))
        assert math.isfinite(value.item()), f"loss {value.item()} for scores of order 1e4"

    def test_one_gradient_step_lowers_the_loss(self, loss):
        scores, teacher, labels, mask = toy_batch()
        targets = self.targets(loss, teacher, labels)
        student = scores.clone().requires_grad_(True)
        before = loss(student, mask=mask, **targets)
        before.backward()
        assert student.grad is not None and student.grad.abs().sum() > 0, "the loss has no gradient in the scores"
        stepped = (student - 0.05 * student.grad / student.grad.norm()).detach()
        assert loss(stepped, mask=mask, **targets).item() < before.item()

    def test_no_gradient_reaches_the_teacher(self, loss):
        scores, teacher, _, mask = toy_batch()
        teacher = teacher.clone().requires_grad_(True)
        loss(scores.clone().requires_grad_(True), teacher=teacher, mask=mask).backward()
        assert teacher.grad is None, "the loss differentiates through the teacher's scores: detach them"

    def test_padded_candidates_do_not_count(self, loss):
        scores, teacher, labels, mask = toy_batch()
        targets = self.targets(loss, teacher, labels)
        moved = scores.clone()
        moved[~mask] = 50.0
        assert loss(moved, mask=mask, **targets).item() == pytest.approx(loss(scores, mask=mask, **targets).item())

    def test_does_not_depend_on_query_or_candidate_order(self, loss):
        scores, teacher, labels, mask = toy_batch()
        base = loss(scores, mask=mask, **self.targets(loss, teacher, labels)).item()
        rows, cols = [2, 0, 1], [3, 1, 0, 2]
        perm = [x[rows][:, cols] for x in (scores, teacher, labels, mask)]
        assert loss(perm[0], mask=perm[3], **self.targets(loss, perm[1], perm[2])).item() == pytest.approx(base)

    def test_zero_when_the_student_is_the_teacher(self, loss):
        if not loss.exact_at_teacher:
            pytest.skip(f"{loss.name} does not declare exact_at_teacher")
        _, teacher, _, mask = toy_batch()
        assert loss(teacher.clone(), teacher=teacher, mask=mask).item() == pytest.approx(0.0, abs=1e-6)

    def test_missing_targets_are_a_clear_error(self, loss):
        from crossedge.core.errors import CrossedgeError

        scores, _, labels, _ = toy_batch()
        with pytest.raises(CrossedgeError):
            loss(scores, labels=labels) if loss.needs_teacher else loss(scores)
