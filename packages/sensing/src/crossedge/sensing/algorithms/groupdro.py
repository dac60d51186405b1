"""GroupDRO (Sagawa et al., 2020, Algorithm 1): minimize a weighted risk whose weights climb toward the worst domain.

Each update multiplies domain ``i``'s weight ``q_i`` by ``exp(groupdro_eta * risk_i)`` and
renormalizes; the weights are a buffer, so they survive save and load.
"""

from __future__ import annotations

from crossedge.core.builtins.algorithms import ERM
from crossedge.core.contracts.algorithm import AlgorithmError, HParam

from .common import check_domains, check_range, finish, make_state, per_domain_risks, pooled_forward


class GroupDRO(ERM):
    """Minimize the q-weighted per-domain risk; q follows exponentiated-gradient ascent on the risks."""

    name = "groupdro"
    description = "group distributionally robust optimization: upweight the training domains with the larger loss"
    HPARAMS = {
        **ERM.HPARAMS,
        "groupdro_eta": HParam(
            1e-2, lambda rng: float(10 ** rng.uniform(-3.0, -1.0)), "step size of the domain weights' ascent"
        ),
    }

    def build_extra(self) -> None:
        """The domain weights ``groups.q``, uniform to start."""
        import torch

        check_range(self, "groupdro_eta", 0.0)
        self.groups = make_state(q=torch.full((self.num_domains,), 1.0 / self.num_domains))

    def update(self, minibatches):
        """Update q from this minibatch's per-domain risks, then one Adam step on their q-weighted sum."""
        import torch

        check_domains(self, minibatches)
        if len(minibatches) != self.num_domains:
            raise AlgorithmError(
                f"algorithm 'groupdro' keeps one weight per training domain and was built for {self.num_domains}, "
                f"but got {len(minibatches)} minibatches; pass one (x, y) per training domain"
            )
        _, logits, labels = pooled_forward(self, minibatches)
        risks = per_domain_risks(logits, labels)
        with torch.no_grad():
            q = self.groups.q * torch.exp(self.hparams["groupdro_eta"] * risks.detach())
            self.groups.q.copy_(q / q.sum())
        loss = torch.dot(risks, self.groups.q)
        self.step(loss)
        return finish(
            self, {"loss": loss, "nll": risks.mean(), "worst_risk": risks.max(), "max_q": self.groups.q.max()}
        )
