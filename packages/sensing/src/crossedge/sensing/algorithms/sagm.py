"""SAGM (Wang et al., 2023): sharpness-aware gradient matching, SAM's flat-minimum search made domain-robust.

Each update takes the gradient ``g`` at the weights ``w``, moves to
``w + (sagm_rho / |g| - sagm_alpha) * g``, takes the gradient there, and steps Adam from ``w``
along the mean of the two gradients: this lowers the loss, the perturbed loss and the gap
between their gradients together (the SAGM authors' optimizer). Batch-norm statistics are
only updated by the first pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from crossedge.core.builtins.algorithms import ERM
from crossedge.core.contracts.algorithm import HParam

from .common import check_domains, check_range, finish

if TYPE_CHECKING:
    import torch


def sagm_gradients(
    params: Sequence[torch.Tensor],
    loss_at: Callable[[], torch.Tensor],
    rho: float,
    alpha: float,
    second_pass: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Set every parameter's ``.grad`` to SAGM's direction; return the loss at ``w`` and at the perturbed weights.

    ``loss_at()`` computes the loss at the parameters' current values; the parameters are
    back at ``w`` (bit for bit) when this returns.
    """
    import torch

    loss = loss_at()
    grads = torch.autograd.grad(loss, params)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    scale = rho / (norm + 1e-12) - alpha
    saved = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, g in zip(params, grads, strict=True):
            p.add_(g * scale)
    with second_pass():  # batch norm's backward reads the running statistics the block restores at its end
        perturbed = loss_at()
        perturbed_grads = torch.autograd.grad(perturbed, params)
    with torch.no_grad():
        for p, original, g, h in zip(params, saved, grads, perturbed_grads, strict=True):
            p.copy_(original)
            p.grad = 0.5 * (g + h)
    return loss.detach(), perturbed.detach()


class SAGM(ERM):
    """ERM's pooled cross-entropy, optimized with Adam along SAGM's two-point gradient."""

    name = "sagm"
    description = "sharpness-aware gradient matching: descend the loss and a perturbed loss together (SAGM)"
    HPARAMS = {
        **ERM.HPARAMS,
        "sagm_rho": HParam(
            0.05, lambda rng: float(rng.choice([0.01, 0.02, 0.05, 0.1])), "radius of the weight perturbation"
        ),
        "sagm_alpha": HParam(
            0.001, lambda rng: float(rng.choice([0.0001, 0.001, 0.01])), "gradient-descent part of the perturbation"
        ),
    }

    def build_extra(self) -> None:
        """No extra network; the perturbation radius and its descent part are not negative."""
        check_range(self, "sagm_rho", 0.0)
        check_range(self, "sagm_alpha", 0.0)

    @contextlib.contextmanager
    def frozen_norm_statistics(self) -> Iterator[None]:
        """Batch-norm layers normalize by the batch inside the block, but their running statistics are restored."""
        from torch import nn

        norms = [
            m
            for net in (self.featurizer, self.classifier)
            for m in net.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
        ]
        saved = [{k: v.clone() for k, v in m.named_buffers(recurse=False)} for m in norms]
        try:
            yield
        finally:
            for m, buffers in zip(norms, saved, strict=True):
                for key, value in buffers.items():
                    getattr(m, key).copy_(value)

    def update(self, minibatches):
        """One Adam step along SAGM's gradient of the pooled cross-entropy."""
        import torch
        import torch.nn.functional as F

        check_domains(self, minibatches)
        x = torch.cat([x for x, _ in minibatches])
        y = torch.cat([y for _, y in minibatches])
        self.train_mode()
        params = [p for module in (self.featurizer, self.classifier) for p in module.parameters()]
        self.optimizer.zero_grad()
        loss, perturbed = sagm_gradients(
            params,
            lambda: F.cross_entropy(self.classifier(self.featurizer(x)), y),
            self.hparams["sagm_rho"],
            self.hparams["sagm_alpha"],
            self.frozen_norm_statistics,
        )
        self.optimizer.step()
        return finish(self, {"loss": loss, "perturbed_loss": perturbed})
