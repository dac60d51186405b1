"""IRM (Arjovsky et al., 2019, IRMv1): ERM plus the squared gradient of each domain's risk w.r.t. a dummy scale.

The penalty of a domain is the product of the gradients of its two halves' risks (an
unbiased estimate of the squared gradient, as DomainBed computes it), so it works with one
training domain too. Its weight is 1 for ``irm_penalty_anneal_iters`` updates, then
``irm_lambda``, with Adam rebuilt at the jump; the update count is a buffer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from crossedge.core.builtins.algorithms import ERM
from crossedge.core.contracts.algorithm import HParam

from .common import annealed_weight, check_domains, check_range, finish, per_domain_risks, pooled_forward, step_counter

if TYPE_CHECKING:
    import torch


def irm_penalty(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """IRMv1's penalty on one domain: grad of the even half's risk times that of the odd half's, w.r.t. a scale of 1."""
    import torch
    import torch.nn.functional as F

    if len(y) < 2:
        return logits.sum() * 0.0  # one window has no two halves: no estimate, no gradient
    scale = torch.ones((), requires_grad=True)
    first = torch.autograd.grad(F.cross_entropy(logits[::2] * scale, y[::2]), [scale], create_graph=True)[0]
    second = torch.autograd.grad(F.cross_entropy(logits[1::2] * scale, y[1::2]), [scale], create_graph=True)[0]
    return first * second


class IRM(ERM):
    """Mean per-domain risk plus an annealed weight times the mean IRMv1 penalty."""

    name = "irm"
    description = "invariant risk minimization: penalize per-domain gradients of a shared classifier scale (IRMv1)"
    HPARAMS = {
        **ERM.HPARAMS,
        "irm_lambda": HParam(
            100.0, lambda rng: float(10 ** rng.uniform(-1.0, 5.0)), "weight of the IRM penalty after annealing"
        ),
        "irm_penalty_anneal_iters": HParam(
            500, lambda rng: int(10 ** rng.uniform(0.0, 4.0)), "updates with penalty weight 1 before irm_lambda"
        ),
    }

    def build_extra(self) -> None:
        """The update counter the anneal schedule reads."""
        check_range(self, "irm_lambda", 0.0)
        check_range(self, "irm_penalty_anneal_iters", 0)
        self.counters = step_counter()

    def update(self, minibatches):
        """One Adam step on mean risk + weight * mean IRM penalty over the training domains."""
        import torch

        check_domains(self, minibatches)
        weight = annealed_weight(self, self.hparams["irm_lambda"], self.hparams["irm_penalty_anneal_iters"])
        _, logits, labels = pooled_forward(self, minibatches)
        nll = per_domain_risks(logits, labels).mean()
        penalty = torch.stack([irm_penalty(z, y) for z, y in zip(logits, labels, strict=True)]).mean()
        loss = nll + weight * penalty
        self.step(loss)
        return finish(self, {"loss": loss, "nll": nll, "penalty": penalty, "penalty_weight": weight})
