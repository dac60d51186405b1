"""MMD (Li et al., 2018, as in DomainBed): ERM plus a multi-bandwidth Gaussian-kernel MMD between domain pairs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from crossedge.core.builtins.algorithms import ERM
from crossedge.core.contracts.algorithm import HParam

from .common import FeatureAlignment

if TYPE_CHECKING:
    import torch

#: Inverse bandwidths of the summed Gaussian kernels, DomainBed's: distances on any scale meet one of them.
GAMMAS = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)


def gaussian_kernel(a: torch.Tensor, b: torch.Tensor, gammas=GAMMAS) -> torch.Tensor:
    """The (len(a), len(b)) sum over ``gammas`` of exp(-gamma * squared distance)."""
    import torch

    squared = (a.pow(2).sum(1, keepdim=True) + b.pow(2).sum(1).unsqueeze(0) - 2 * a @ b.T).clamp_min(0.0)
    return torch.stack([torch.exp(-g * squared) for g in gammas]).sum(0)


def mmd_penalty(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The (biased) squared MMD between two feature sets under :func:`gaussian_kernel`."""
    return gaussian_kernel(a, a).mean() + gaussian_kernel(b, b).mean() - 2 * gaussian_kernel(a, b).mean()


class MMD(FeatureAlignment):
    """Cross-entropy per domain plus ``mmd_gamma`` times the Gaussian-kernel MMD between every pair of domains."""

    name = "mmd"
    description = "ERM plus a Gaussian-kernel MMD between the feature distributions of training domains"
    HPARAMS = {
        **ERM.HPARAMS,
        "mmd_gamma": HParam(1.0, lambda rng: float(10 ** rng.uniform(-1.0, 1.0)), "weight of the MMD penalty"),
    }

    @staticmethod
    def penalty(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The Gaussian-kernel MMD between two domains' features."""
        return mmd_penalty(a, b)
