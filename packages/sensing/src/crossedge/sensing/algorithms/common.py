"""What the domain-generalization baselines share: saved training state, pooled forwards, seeded draws.

Each method lives in its own module (``coral``, ``mmd``, ``dann``...) on core's
:class:`~crossedge.core.builtins.algorithms.ERM`; these helpers keep those modules to the
method itself. torch and numpy are imported inside functions, because the method modules
are what ``plugin.py`` references and listing algorithms must not import torch.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from crossedge.core.builtins.algorithms import ERM
from crossedge.core.contracts.algorithm import AlgorithmError

if TYPE_CHECKING:
    import numpy as np
    import torch

    from crossedge.core.networks import FeaturizerClassifier

Minibatches = Sequence[tuple["torch.Tensor", "torch.Tensor"]]


def make_state(**tensors: torch.Tensor) -> torch.nn.Module:
    """A module holding ``tensors`` as buffers, so counters and weights are saved with the networks."""
    import torch

    module = torch.nn.Module()
    for name, tensor in tensors.items():
        module.register_buffer(name, tensor)
    return module


def step_counter() -> torch.nn.Module:
    """A state module with one int64 ``step`` buffer: how many updates the algorithm has taken."""
    import torch

    return make_state(step=torch.zeros((), dtype=torch.int64))


def check_domains(algorithm: FeaturizerClassifier, minibatches: Minibatches) -> None:
    """Refuse an empty update, or one with more minibatches than the training domains it was built for."""
    if not minibatches:
        raise AlgorithmError(f"algorithm {algorithm.name!r} got no minibatches: pass one (x, y) per training domain")
    if len(minibatches) > algorithm.num_domains:
        raise AlgorithmError(
            f"algorithm {algorithm.name!r} was built for {algorithm.num_domains} training domain(s) but got "
            f"{len(minibatches)} minibatches; build it with num_domains={len(minibatches)}"
        )


def check_range(
    algorithm: FeaturizerClassifier, key: str, low: float | None = None, high: float | None = None, *, open_low=False
) -> None:
    """Refuse a hyperparameter outside [low, high] (or (low, high] with ``open_low``), naming the bounds."""
    value = algorithm.hparams[key]
    too_low = low is not None and (value <= low if open_low else value < low)
    if too_low or (high is not None and value > high):
        lower = f"{'(' if open_low else '['}{low}" if low is not None else "(-inf"
        upper = f"{high}]" if high is not None else "inf)"
        bounds = f"{lower}, {upper}"
        raise AlgorithmError(
            f"hyperparameter {key!r} of algorithm {algorithm.name!r} must be in {bounds}, got {value!r}"
        )


def pooled_forward(
    algorithm: FeaturizerClassifier, minibatches: Minibatches
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Features, logits and labels per domain from one training-mode forward over every domain's windows.

    One forward over the pooled batch (as ERM does) keeps batch-norm statistics the same as
    ERM's, so a penalty between domains measures what the shared network does, not what
    per-domain normalization would hide.
    """
    import torch

    sizes = [len(x) for x, _ in minibatches]
    algorithm.train_mode()
    features = algorithm.featurizer(torch.cat([x for x, _ in minibatches]))
    logits = algorithm.classifier(features)
    return list(features.split(sizes)), list(logits.split(sizes)), [y for _, y in minibatches]


def per_domain_risks(logits: Sequence[torch.Tensor], labels: Sequence[torch.Tensor]) -> torch.Tensor:
    """The cross-entropy of each domain, stacked into one tensor (num_domains,)."""
    import torch
    import torch.nn.functional as F

    return torch.stack([F.cross_entropy(z, y) for z, y in zip(logits, labels, strict=True)])


def annealed_weight(algorithm: FeaturizerClassifier, weight: float, anneal_iters: int) -> float:
    """A penalty's weight this update: 1 for ``anneal_iters`` updates, then ``weight`` (IRM, VREx).

    Adam is rebuilt on the update where the weight jumps, as DomainBed does: its moment
    estimates were fitted to gradients of a much smaller penalty.
    """
    step = int(algorithm.counters.step)
    if step == anneal_iters and anneal_iters > 0:
        algorithm.optimizer = algorithm.make_optimizer(algorithm.parameters())
    return float(weight) if step >= anneal_iters else 1.0


def update_seed(algorithm: FeaturizerClassifier, salt: str) -> list[int]:
    """Entropy for this update's random draws: the algorithm's seed, its step count and a per-use salt.

    Draws that depend only on saved state make a resumed run draw what an uninterrupted one
    would, and two instances with one seed draw the same, whatever else used torch's RNG.
    """
    return [algorithm.seed, int(algorithm.counters.step), zlib.crc32(f"{algorithm.name}/{salt}".encode())]


def numpy_rng(algorithm: FeaturizerClassifier, salt: str) -> np.random.Generator:
    """A numpy generator for this update's draws (see :func:`update_seed`)."""
    import numpy as np

    return np.random.default_rng(update_seed(algorithm, salt))


def torch_rng(algorithm: FeaturizerClassifier, salt: str) -> torch.Generator:
    """A torch CPU generator for this update's draws (see :func:`update_seed`)."""
    import numpy as np
    import torch

    seed = int(np.random.SeedSequence(update_seed(algorithm, salt)).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.Generator().manual_seed(seed)


def finish(algorithm: FeaturizerClassifier, measured: dict[str, Any]) -> dict[str, float]:
    """Count the update and return its measurements as plain floats."""
    if hasattr(algorithm, "counters"):
        algorithm.counters.step += 1
    return {key: float(value.detach()) if hasattr(value, "detach") else float(value) for key, value in measured.items()}


def pairwise_penalty(features: Sequence[torch.Tensor], penalty) -> torch.Tensor | float:
    """The mean of ``penalty(a, b)`` over every unordered pair of domains' features; 0.0 for one domain."""
    pairs = [(i, j) for i in range(len(features)) for j in range(i + 1, len(features))]
    if not pairs:
        return 0.0
    return sum(penalty(features[i], features[j]) for i, j in pairs) / len(pairs)


class FeatureAlignment(ERM):
    """ERM plus ``mmd_gamma`` times a distance between every pair of domains' features (CORAL, MMD).

    Not registered itself: a subclass sets ``penalty``, ``name`` and ``HPARAMS`` (with ``mmd_gamma``).
    """

    def build_extra(self) -> None:
        """No extra network; the penalty weight must not be negative."""
        check_range(self, "mmd_gamma", 0.0)

    @staticmethod
    def penalty(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The distance between two domains' features that the method minimizes."""
        raise NotImplementedError

    def update(self, minibatches):
        """One Adam step on the mean per-domain cross-entropy plus the weighted mean pairwise penalty."""
        check_domains(self, minibatches)
        features, logits, labels = pooled_forward(self, minibatches)
        nll = per_domain_risks(logits, labels).mean()
        penalty = pairwise_penalty(features, self.penalty)
        loss = nll + self.hparams["mmd_gamma"] * penalty
        self.step(loss)
        return finish(self, {"loss": loss, "nll": nll, "penalty": penalty})
