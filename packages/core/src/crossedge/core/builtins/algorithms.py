"""Built-in domain algorithms: ``erm``, the reference every other algorithm is compared with."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from crossedge.core.contracts.algorithm import DomainAlgorithm, HParam
from crossedge.core.hookspecs import hookimpl

if TYPE_CHECKING:
    import torch


def conv_classifier(channels: int, num_classes: int, width: int, kernel_size: int) -> torch.nn.Module:
    """Two 1-D convolutions over time, mean-pooled over time, then a linear head: (N, T, C) -> (N, classes)."""
    from torch import nn

    class ConvClassifier(nn.Module):
        def __init__(self):
            super().__init__()
            pad = kernel_size // 2
            self.features = nn.Sequential(
                nn.Conv1d(channels, width, kernel_size, padding=pad),
                nn.ReLU(),
                nn.Conv1d(width, width, kernel_size, padding=pad),
                nn.ReLU(),
            )
            self.head = nn.Linear(width, num_classes)

        def forward(self, x):
            # windows arrive as (N, T, C); Conv1d wants channels first
            return self.head(self.features(x.transpose(1, 2)).mean(dim=2))

    return ConvClassifier()


class ERM(DomainAlgorithm):
    """Empirical risk minimization: pool every training domain's minibatch and minimize cross-entropy."""

    name = "erm"
    description = "empirical risk minimization over the pooled training domains (1-D conv, Adam)"
    HPARAMS = {
        "lr": HParam(3e-3, lambda rng: 10 ** rng.uniform(-3.5, -2.0), "Adam learning rate"),
        "weight_decay": HParam(0.0, lambda rng: 10 ** rng.uniform(-6.0, -3.0), "Adam weight decay"),
        "width": HParam(32, lambda rng: int(rng.choice([16, 32, 64])), "channels of both convolutions"),
        "kernel_size": HParam(5, lambda rng: int(rng.choice([3, 5, 7])), "convolution length in time steps"),
    }

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        num_domains: int,
        hparams: dict | None = None,
        seed: int = 0,
    ):
        super().__init__(input_shape, num_classes, num_domains, hparams, seed)
        import torch

        _, channels = self.input_shape
        with self.seeded():
            self.network = conv_classifier(channels, num_classes, self.hparams["width"], self.hparams["kernel_size"])
        self.optimizer = torch.optim.Adam(
            self.network.parameters(), lr=self.hparams["lr"], weight_decay=self.hparams["weight_decay"]
        )

    def update(self, minibatches):
        """One Adam step on the cross-entropy of all training domains' windows together."""
        import torch
        import torch.nn.functional as F

        x = torch.cat([x for x, _ in minibatches])
        y = torch.cat([y for _, y in minibatches])
        self.network.train()
        loss = F.cross_entropy(self.network(x), y)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"loss": float(loss.detach())}

    def predict(self, x):
        """Logits (N, num_classes), without tracking gradients."""
        import torch

        self.network.eval()
        with torch.no_grad():
            return self.network(x)


@hookimpl
def register_algorithms(register):
    register(ERM)
