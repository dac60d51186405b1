"""CORAL (Sun and Saenko, 2016): ERM plus matching the feature means and covariances of every pair of domains."""

from __future__ import annotations

from typing import TYPE_CHECKING

from crossedge.core.builtins.algorithms import ERM
from crossedge.core.contracts.algorithm import HParam

from .common import FeatureAlignment

if TYPE_CHECKING:
    import torch


def coral_penalty(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the two feature sets' means plus that of their covariances."""
    mean_a, mean_b = a.mean(0, keepdim=True), b.mean(0, keepdim=True)
    centred_a, centred_b = a - mean_a, b - mean_b
    # an unbiased covariance needs two windows; a one-window batch contributes its zero scatter
    cov_a = centred_a.T @ centred_a / max(len(a) - 1, 1)
    cov_b = centred_b.T @ centred_b / max(len(b) - 1, 1)
    return (mean_a - mean_b).pow(2).mean() + (cov_a - cov_b).pow(2).mean()


class CORAL(FeatureAlignment):
    """Cross-entropy per domain plus ``mmd_gamma`` times the CORAL distance between every pair of domains."""

    name = "coral"
    description = "ERM plus matching feature means and covariances across training domains (Deep CORAL)"
    HPARAMS = {
        **ERM.HPARAMS,
        "mmd_gamma": HParam(1.0, lambda rng: float(10 ** rng.uniform(-1.0, 1.0)), "weight of the CORAL penalty"),
    }

    @staticmethod
    def penalty(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The CORAL distance between two domains' features."""
        return coral_penalty(a, b)
