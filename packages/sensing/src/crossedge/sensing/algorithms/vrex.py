"""V-REx (Krueger et al., 2021): ERM plus the variance of the per-domain risks, its weight annealed in.

For the first ``vrex_penalty_anneal_iters`` updates the penalty weighs 1, then
``vrex_lambda``; Adam is rebuilt at the jump (DomainBed). The update count is a buffer, so
a loaded algorithm continues the schedule where it stopped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from crossedge.core.builtins.algorithms import ERM
from crossedge.core.contracts.algorithm import HParam

from .common import annealed_weight, check_domains, check_range, finish, per_domain_risks, pooled_forward, step_counter

if TYPE_CHECKING:
    import torch


def risk_variance(risks: torch.Tensor) -> torch.Tensor:
    """The variance (over domains, not unbiased) of the per-domain risks; 0 for one domain."""
    return (risks - risks.mean()).pow(2).mean()


class VREx(ERM):
    """Mean per-domain risk plus an annealed weight times the risks' variance."""

    name = "vrex"
    description = "risk extrapolation: penalize the variance of the training domains' risks (V-REx)"
    HPARAMS = {
        **ERM.HPARAMS,
        "vrex_lambda": HParam(
            10.0, lambda rng: float(10 ** rng.uniform(-1.0, 5.0)), "weight of the variance penalty after annealing"
        ),
        "vrex_penalty_anneal_iters": HParam(
            500, lambda rng: int(10 ** rng.uniform(0.0, 4.0)), "updates with penalty weight 1 before vrex_lambda"
        ),
    }

    def build_extra(self) -> None:
        """The update counter the anneal schedule reads."""
        check_range(self, "vrex_lambda", 0.0)
        check_range(self, "vrex_penalty_anneal_iters", 0)
        self.counters = step_counter()

    def update(self, minibatches):
        """One Adam step on mean risk + weight * variance of the per-domain risks."""
        check_domains(self, minibatches)
        weight = annealed_weight(self, self.hparams["vrex_lambda"], self.hparams["vrex_penalty_anneal_iters"])
        _, logits, labels = pooled_forward(self, minibatches)
        risks = per_domain_risks(logits, labels)
        nll, penalty = risks.mean(), risk_variance(risks)
        loss = nll + weight * penalty
        self.step(loss)
        return finish(self, {"loss": loss, "nll": nll, "penalty": penalty, "penalty_weight": weight})
