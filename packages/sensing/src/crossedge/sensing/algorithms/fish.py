"""Fish (Shi et al., 2022): gradient matching by a first-order meta step over the training domains.

A copy of the network takes one Adam step on each training domain in turn; the network
then moves ``meta_lr`` of the way toward the copy. The copy's Adam moments persist across
updates (DomainBed's form). With one training domain this is ERM slowed by ``meta_lr``.
"""

from __future__ import annotations

from crossedge.core.builtins.algorithms import ERM
from crossedge.core.contracts.algorithm import HParam

from .common import check_domains, check_range, finish


class Fish(ERM):
    """Sequential inner steps per domain on a copy, then a Reptile-style step toward the copy."""

    name = "fish"
    description = "Fish: inner steps domain by domain on a copy, then move toward it (gradient matching)"
    HPARAMS = {
        **ERM.HPARAMS,
        "meta_lr": HParam(0.5, lambda rng: float(rng.choice([0.05, 0.1, 0.5])), "fraction of the way toward the copy"),
    }

    def __init__(self, input_shape, num_classes, num_domains, hparams=None, seed=0):
        super().__init__(input_shape, num_classes, num_domains, hparams, seed)
        import copy

        # a tuple, not attributes: the copy is scratch rebuilt every update, not state to save
        self.inner = (copy.deepcopy(self.featurizer), copy.deepcopy(self.classifier))
        self.optimizer = self.make_optimizer([p for module in self.inner for p in module.parameters()])

    def build_extra(self) -> None:
        """No extra saved network; ``meta_lr`` is a fraction in (0, 1]."""
        check_range(self, "meta_lr", 0.0, 1.0, open_low=True)

    def update(self, minibatches):
        """Inner Adam steps on each domain's minibatch, then the meta step toward the inner weights."""
        import torch
        import torch.nn.functional as F

        check_domains(self, minibatches)
        outer = (self.featurizer, self.classifier)
        for inner, module in zip(self.inner, outer, strict=True):
            inner.load_state_dict(module.state_dict())
            inner.train()
        featurizer, classifier = self.inner
        losses = []
        for x, y in minibatches:
            loss = F.cross_entropy(classifier(featurizer(x)), y)
            self.step(loss)
            losses.append(loss.detach())
        with torch.no_grad():
            for inner, module in zip(self.inner, outer, strict=True):
                for target, source in zip(module.parameters(), inner.parameters(), strict=True):
                    target.add_(self.hparams["meta_lr"] * (source - target))
                for target, source in zip(module.buffers(), inner.buffers(), strict=True):
                    # batch-norm statistics move like the weights; the batch counter is the copy's
                    if target.is_floating_point():
                        target.add_(self.hparams["meta_lr"] * (source - target))
                    else:
                        target.copy_(source)
        return finish(self, {"loss": torch.stack(losses).mean()})
