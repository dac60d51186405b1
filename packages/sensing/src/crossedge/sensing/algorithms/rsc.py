"""RSC (Huang et al., 2020): mute the features the prediction leans on most, and learn from what is left.

Per window, the features with the largest gradient of the true class's logit (the top
``rsc_f_drop_factor`` of them) are zeroed; the muting is kept only for the windows whose
true-class probability drops the most from it (the top ``rsc_b_drop_factor`` of the batch),
and the classifier is trained on those partly muted features (DomainBed's form).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from crossedge.core.builtins.algorithms import ERM
from crossedge.core.contracts.algorithm import HParam

from .common import check_domains, check_range, finish

if TYPE_CHECKING:
    import torch


def feature_mask(feature_grads: torch.Tensor, f_drop: float) -> torch.Tensor:
    """True (N, D) where a window's feature is kept: False for its top ``f_drop`` fraction by gradient."""
    import torch

    return feature_grads <= torch.quantile(feature_grads, 1.0 - f_drop, dim=1, keepdim=True)


def rsc_mask(kept_features: torch.Tensor, changes: torch.Tensor, b_drop: float) -> torch.Tensor:
    """The 0/1 training mask: :func:`feature_mask`'s muting, kept only for the windows whose confidence
    ``changes`` under it are in the batch's top ``b_drop``; the other windows keep every feature."""
    import torch

    kept_windows = (changes <= torch.quantile(changes, 1.0 - b_drop)).unsqueeze(1)
    return (kept_features | kept_windows).float()


class RSC(ERM):
    """Representation self-challenging: cross-entropy on features with their most predictive part muted."""

    name = "rsc"
    description = "representation self-challenging: train on features with the most predictive ones muted (RSC)"
    HPARAMS = {
        **ERM.HPARAMS,
        "rsc_f_drop_factor": HParam(
            1 / 3, lambda rng: float(rng.uniform(0.0, 0.5)), "fraction of each window's features muted"
        ),
        "rsc_b_drop_factor": HParam(
            1 / 3, lambda rng: float(rng.uniform(0.0, 0.5)), "fraction of the batch's windows that are muted"
        ),
    }

    def build_extra(self) -> None:
        """No extra network; both drop factors are fractions."""
        check_range(self, "rsc_f_drop_factor", 0.0, 1.0)
        check_range(self, "rsc_b_drop_factor", 0.0, 1.0)

    def update(self, minibatches):
        """One Adam step on the cross-entropy of the classifier applied to the muted features."""
        import torch
        import torch.nn.functional as F

        check_domains(self, minibatches)
        y = torch.cat([y for _, y in minibatches])
        self.train_mode()
        features = self.featurizer(torch.cat([x for x, _ in minibatches]))
        logits = self.classifier(features)
        onehot = F.one_hot(y, self.num_classes).to(logits.dtype)
        # the gradient of the true-class logit says which features the prediction leans on
        grads = torch.autograd.grad((logits * onehot).sum(), features, retain_graph=True)[0]
        with torch.no_grad():
            kept = feature_mask(grads, self.hparams["rsc_f_drop_factor"])
            muted = self.classifier(features * kept)
            changes = (F.softmax(logits, 1) * onehot).sum(1) - (F.softmax(muted, 1) * onehot).sum(1)
            mask = rsc_mask(kept, changes, self.hparams["rsc_b_drop_factor"])
        loss = F.cross_entropy(self.classifier(features * mask), y)
        self.step(loss)
        return finish(self, {"loss": loss, "muted": 1.0 - mask.mean()})
