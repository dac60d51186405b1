"""DANN (Ganin et al., 2016): a domain discriminator on the features, trained through a gradient reversal layer.

The discriminator learns to tell the training domains apart from the features; the same
backward pass hands the featurizer ``-dann_lambda`` times the discriminator's gradient, so
the featurizer learns features the discriminator cannot separate (Ganin et al.'s one-step
form; DomainBed alternates generator and discriminator steps instead).
Generator (featurizer, classifier) and discriminator have their own Adam, with DomainBed's
``lr_d``, ``weight_decay_d`` and ``beta1``.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from crossedge.core.builtins.algorithms import ERM
from crossedge.core.contracts.algorithm import HParam

from .common import check_domains, check_range, finish, pooled_forward

if TYPE_CHECKING:
    import torch


@functools.cache
def _reversal_function():
    import torch

    class GradientReversal(torch.autograd.Function):
        """Identity forward; the backward multiplies the gradient by ``-coefficient``."""

        @staticmethod
        def forward(ctx, x, coefficient):
            ctx.coefficient = coefficient
            return x.view_as(x)

        @staticmethod
        def backward(ctx, grad):
            return -ctx.coefficient * grad, None

    return GradientReversal


def reverse_gradient(x: torch.Tensor, coefficient: float = 1.0) -> torch.Tensor:
    """``x`` unchanged, but gradients flowing back through it are multiplied by ``-coefficient``."""
    return _reversal_function().apply(x, float(coefficient))


class DANN(ERM):
    """ERM plus a domain discriminator whose gradient reaches the featurizer reversed."""

    name = "dann"
    description = "domain-adversarial training: a domain discriminator behind a gradient reversal layer (DANN)"
    HPARAMS = {
        **ERM.HPARAMS,
        "dann_lambda": HParam(
            1.0, lambda rng: float(10 ** rng.uniform(-2.0, 1.0)), "weight of the reversed discriminator gradient"
        ),
        "lr_d": HParam(1e-3, lambda rng: float(10 ** rng.uniform(-4.5, -2.5)), "discriminator Adam learning rate"),
        "weight_decay_d": HParam(0.0, lambda rng: float(10 ** rng.uniform(-6.0, -2.0)), "discriminator weight decay"),
        "beta1": HParam(0.5, lambda rng: float(rng.choice([0.0, 0.5])), "Adam beta1 of both optimizers"),
        "mlp_width": HParam(64, lambda rng: int(2 ** rng.uniform(5.0, 8.0)), "discriminator hidden width"),
        "mlp_depth": HParam(3, lambda rng: int(rng.choice([2, 3, 4])), "discriminator layers (linear maps)"),
    }

    def __init__(self, input_shape, num_classes, num_domains, hparams=None, seed=0):
        super().__init__(input_shape, num_classes, num_domains, hparams, seed)
        import torch

        betas = (self.hparams["beta1"], 0.9)
        generator = [p for module in (self.featurizer, self.classifier) for p in module.parameters()]
        self.optimizer = torch.optim.Adam(
            generator, lr=self.hparams["lr"], weight_decay=self.hparams["weight_decay"], betas=betas
        )
        self.disc_optimizer = torch.optim.Adam(
            self.discriminator.parameters(),
            lr=self.hparams["lr_d"],
            weight_decay=self.hparams["weight_decay_d"],
            betas=betas,
        )

    def build_extra(self) -> None:
        """The discriminator: an MLP from features to one logit per training domain."""
        from torch import nn

        check_range(self, "dann_lambda", 0.0)
        check_range(self, "lr_d", 0.0, open_low=True)
        check_range(self, "mlp_width", 1)
        check_range(self, "mlp_depth", 1)
        width, depth = self.hparams["mlp_width"], self.hparams["mlp_depth"]
        sizes = [self.featurizer.out_features] + [width] * (depth - 1) + [self.num_domains]
        layers: list[nn.Module] = []
        for i, (inp, out) in enumerate(zip(sizes, sizes[1:], strict=False)):
            layers.append(nn.Linear(inp, out))
            if i < depth - 1:
                layers.append(nn.ReLU())
        self.discriminator = nn.Sequential(*layers)

    def adversarial_loss(self, features: torch.Tensor, domains: torch.Tensor) -> torch.Tensor:
        """The discriminator's cross-entropy on ``features`` seen through the gradient reversal layer."""
        import torch.nn.functional as F

        return F.cross_entropy(self.discriminator(reverse_gradient(features, self.hparams["dann_lambda"])), domains)

    def update(self, minibatches):
        """One step of both optimizers on classification loss plus the (reversed) discriminator loss.

        ``loss`` is the classification cross-entropy (what the classifier is trained to
        lower); ``disc_loss`` and ``disc_acc`` show how well the domains can still be told apart.
        With one training domain there is nothing to tell apart: only the classification loss is stepped.
        """
        import torch
        import torch.nn.functional as F

        check_domains(self, minibatches)
        features, logits, labels = pooled_forward(self, minibatches)
        nll = F.cross_entropy(torch.cat(logits), torch.cat(labels))  # pooled, as ERM's
        measured = {"loss": nll}
        total = nll
        if len(minibatches) > 1:
            domains = torch.cat([torch.full((len(f),), i, dtype=torch.int64) for i, f in enumerate(features)])
            pooled = torch.cat(features)
            disc_loss = self.adversarial_loss(pooled, domains)
            total = nll + disc_loss
            with torch.no_grad():
                measured["disc_acc"] = (self.discriminator(pooled).argmax(1) == domains).float().mean()
            measured["disc_loss"] = disc_loss
        self.optimizer.zero_grad()
        self.disc_optimizer.zero_grad()
        total.backward()
        self.optimizer.step()
        self.disc_optimizer.step()
        return finish(self, measured)
