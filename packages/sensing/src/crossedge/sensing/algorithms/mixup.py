"""Inter-domain Mixup (Xu et al., 2020; Yan et al., 2020): train on convex mixtures of windows from two domains.

As in DomainBed, the training domains are put in a random cycle and each is mixed with the
next one, with one Beta(``mixup_alpha``, ``mixup_alpha``) weight per pair; the loss mixes the
two labels' cross-entropies with the same weight. The partner domain's windows are shuffled
first, so minibatches that arrive in the same label order still mix different labels; with
one training domain a window is mixed with another window of that domain. The draws come
from the seed and the update count, so a resumed run mixes as an uninterrupted one would.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from crossedge.core.builtins.algorithms import ERM
from crossedge.core.contracts.algorithm import HParam

from .common import check_domains, check_range, finish, numpy_rng, step_counter, torch_rng

if TYPE_CHECKING:
    import torch


class Mixup(ERM):
    """Cross-entropy on mixtures of pairs of training domains' windows, labels mixed alike."""

    name = "mixup"
    description = "inter-domain mixup: train on convex combinations of windows (and labels) from two domains"
    HPARAMS = {
        **ERM.HPARAMS,
        "mixup_alpha": HParam(
            0.2, lambda rng: float(10 ** rng.uniform(-1.0, 1.0)), "Beta(alpha, alpha) distribution of the mixing weight"
        ),
    }

    def build_extra(self) -> None:
        """The update counter that seeds the draws."""
        check_range(self, "mixup_alpha", 0.0, open_low=True)
        self.counters = step_counter()

    def mix(self, minibatches) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, float, int, int]]:
        """This update's mixtures: ``(x, y_i, y_j, lam, i, j)`` with ``x = lam * x_i + (1 - lam) * x_j``."""
        import torch

        rng, generator = numpy_rng(self, "mix"), torch_rng(self, "shuffle")
        n = len(minibatches)
        order = [int(k) for k in rng.permutation(n)]
        mixtures = []
        for k in range(n):
            i, j = order[k], order[(k + 1) % n]
            (xi, yi), (xj, yj) = minibatches[i], minibatches[j]
            shuffle = torch.randperm(len(xj), generator=generator)
            xj, yj = xj[shuffle], yj[shuffle]
            size = min(len(xi), len(xj))
            lam = float(rng.beta(self.hparams["mixup_alpha"], self.hparams["mixup_alpha"]))
            mixtures.append((lam * xi[:size] + (1 - lam) * xj[:size], yi[:size], yj[:size], lam, i, j))
        return mixtures

    def update(self, minibatches):
        """One Adam step on the mean over pairs of the label-mixed cross-entropy."""
        import torch
        import torch.nn.functional as F

        check_domains(self, minibatches)
        mixtures = self.mix(minibatches)
        self.train_mode()
        logits = self.classifier(self.featurizer(torch.cat([m[0] for m in mixtures]))).split(
            [len(m[0]) for m in mixtures]
        )
        loss = sum(
            lam * F.cross_entropy(z, yi) + (1 - lam) * F.cross_entropy(z, yj)
            for z, (_, yi, yj, lam, _, _) in zip(logits, mixtures, strict=True)
        ) / len(mixtures)
        self.step(loss)
        return finish(self, {"loss": loss})
