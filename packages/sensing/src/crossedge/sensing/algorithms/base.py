"""The shared shape of sensing algorithms: a featurizer (a backbone), a linear classifier, one Adam optimizer.

DomainBed's algorithms are a featurizer plus a classifier with a loss that differs per
method; :class:`SensingAlgorithm` builds that pair from the ``backbone`` and ``width``
hyperparameters so a method only writes its ``update``. ``predict`` is shared.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from crossedge.core.contracts.algorithm import DomainAlgorithm, HParam

from .backbones import BACKBONES, make_backbone

#: Hyperparameters every sensing algorithm has, with DomainBed-style seeded search distributions.
BASE_HPARAMS = {
    "lr": HParam(1e-3, lambda rng: float(10 ** rng.uniform(-4.0, -2.5)), "Adam learning rate"),
    "weight_decay": HParam(0.0, lambda rng: float(10 ** rng.uniform(-6.0, -2.0)), "Adam weight decay"),
    "width": HParam(32, lambda rng: int(rng.choice([16, 32, 64])), "feature width of the backbone"),
    "backbone": HParam("cnn1d", lambda rng: "cnn1d", f"featurizer: {', '.join(BACKBONES)}"),
}


class SensingAlgorithm(DomainAlgorithm):
    """A featurizer and a linear classifier trained with Adam; subclasses write ``update`` (and maybe ``adapt``)."""

    HPARAMS = BASE_HPARAMS

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        num_domains: int,
        hparams: dict[str, Any] | None = None,
        seed: int = 0,
    ):
        super().__init__(input_shape, num_classes, num_domains, hparams, seed)
        import torch

        with self.seeded():
            self.featurizer = make_backbone(self.hparams["backbone"], self.input_shape, self.hparams["width"])
            self.classifier = torch.nn.Linear(self.featurizer.out_features, self.num_classes)
            self.build_extra()
        self.optimizer = self.make_optimizer(self.parameters())

    def build_extra(self) -> None:
        """Build method-specific networks (a domain discriminator...), under the seeded RNG; default none."""

    def parameters(self) -> list:
        """Every trainable parameter of every network."""
        return [p for module in self.networks().values() for p in module.parameters()]

    def make_optimizer(self, params) -> Any:
        """Adam with the ``lr`` and ``weight_decay`` hyperparameters."""
        import torch

        return torch.optim.Adam(params, lr=self.hparams["lr"], weight_decay=self.hparams["weight_decay"])

    def train_mode(self, on: bool = True) -> None:
        """Put every network in training (or evaluation) mode."""
        for module in self.networks().values():
            module.train(on)

    def step(self, loss) -> None:
        """Zero the gradients, back-propagate ``loss`` and take one optimizer step."""
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()

    def predict(self, x):
        """Logits (N, num_classes) from featurizer and classifier, in evaluation mode, without gradients."""
        import torch

        self.train_mode(False)
        with torch.no_grad():
            return self.classifier(self.featurizer(x))
