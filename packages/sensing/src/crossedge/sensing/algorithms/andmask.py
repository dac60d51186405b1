"""AND-mask (Parascandolo et al., 2021): step only along gradient components whose sign the domains agree on.

Each training domain's gradient is computed on its own; a parameter entry keeps the mean
gradient where the domains' signs agree by at least ``tau`` (|mean sign| >= tau, so 1 is
unanimity), is zeroed elsewhere, and each tensor is rescaled by the inverse of its kept
fraction (DomainBed's form). An entry whose gradient is exactly zero in every domain (a dead
ReLU unit, say) counts as kept: its step is zero either way, and counting it as refused would
inflate the rescaling of the rest. With one training domain every sign agrees: the step is ERM's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from crossedge.core.builtins.algorithms import ERM
from crossedge.core.contracts.algorithm import HParam

from .common import check_domains, check_range, finish

if TYPE_CHECKING:
    import torch


def and_mask(domain_grads: Sequence[torch.Tensor], tau: float) -> torch.Tensor:
    """The masked mean of one parameter's per-domain gradients, rescaled by the inverse kept fraction."""
    import torch

    grads = torch.stack(list(domain_grads))
    agree = ((torch.sign(grads).mean(0).abs() >= tau) | (grads == 0).all(0)).to(grads.dtype)
    return agree * grads.mean(0) / (1e-10 + agree.mean())


class ANDMask(ERM):
    """Adam on the AND-masked mean of the per-domain gradients."""

    name = "andmask"
    description = "AND-mask: update only the gradient components whose sign the training domains agree on"
    HPARAMS = {
        **ERM.HPARAMS,
        "tau": HParam(1.0, lambda rng: float(rng.uniform(0.5, 1.0)), "agreement needed: |mean gradient sign| >= tau"),
    }

    def build_extra(self) -> None:
        """No extra network; ``tau`` is an agreement level in [0, 1]."""
        check_range(self, "tau", 0.0, 1.0)

    def update(self, minibatches):
        """Per-domain gradients, masked by sign agreement, then one Adam step."""
        import torch
        import torch.nn.functional as F

        check_domains(self, minibatches)
        self.train_mode()
        params = [p for module in (self.featurizer, self.classifier) for p in module.parameters()]
        per_domain, losses = [], []
        for x, y in minibatches:
            loss = F.cross_entropy(self.classifier(self.featurizer(x)), y)
            per_domain.append(torch.autograd.grad(loss, params))
            losses.append(loss.detach())
        self.optimizer.zero_grad()
        with torch.no_grad():
            for i, param in enumerate(params):
                param.grad = and_mask([grads[i] for grads in per_domain], self.hparams["tau"])
        self.optimizer.step()
        return finish(self, {"loss": torch.stack(losses).mean()})
