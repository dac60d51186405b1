"""Pieces the few-shot algorithms share: checked adapt inputs, episodes, class banks, features, MMD.

Imported only inside the methods of the few-shot algorithms (``finetune``, ``protonet``,
``knn-mmd``, ``crossfi``), so torch is imported at the top here and registering those
algorithms stays free of it.
"""

from __future__ import annotations

import torch
from torch import nn

from crossedge.core.contracts.algorithm import AlgorithmError, DomainAlgorithm

#: logit given to a class no prototype or template exists for: finite (the contract wants
#: finite logits), and far enough below any real score that softmax gives it ~0
UNKNOWN_CLASS_GAP = 1e4


def check_adapt_inputs(
    algorithm: DomainAlgorithm, support_x, support_y, unlabelled_x
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The adapt verb's three inputs as float32 / int64 tensors; a wrong shape or label is an AlgorithmError."""
    shape = algorithm.input_shape

    def windows(label: str, x) -> torch.Tensor:
        x = torch.as_tensor(x, dtype=torch.float32)
        if x.numel() == 0:
            x = x.reshape(0, *shape)  # an empty list or array arrives without the window shape
        if x.dim() != 3 or tuple(x.shape[1:]) != shape:
            raise AlgorithmError(
                f"{algorithm.name}.adapt: {label} has shape {tuple(x.shape)}, expected (N, {shape[0]}, {shape[1]}) "
                f"windows like the training ones"
            )
        return x

    support_x, unlabelled_x = windows("support_x", support_x), windows("unlabelled_x", unlabelled_x)
    support_y = torch.as_tensor(support_y, dtype=torch.int64).reshape(-1)
    if len(support_y) != len(support_x):
        raise AlgorithmError(
            f"{algorithm.name}.adapt: {len(support_x)} support windows but {len(support_y)} support labels; "
            f"give one label per window"
        )
    bad = support_y[(support_y < 0) | (support_y >= algorithm.num_classes)]
    if len(bad):
        raise AlgorithmError(
            f"{algorithm.name}.adapt: support label {int(bad[0])} is outside 0..{algorithm.num_classes - 1}; "
            f"labels are the dataset's label ids"
        )
    return support_x, support_y, unlabelled_x


def eval_features(featurizer: nn.Module, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Features of ``x`` in evaluation mode without gradients, ``batch`` windows at a time."""
    was_training = featurizer.training
    featurizer.eval()
    try:
        with torch.no_grad():
            if len(x) == 0:
                return featurizer(torch.zeros(1, *x.shape[1:], dtype=x.dtype))[:0]
            return torch.cat([featurizer(x[i : i + batch]) for i in range(0, len(x), batch)])
    finally:
        featurizer.train(was_training)


def episode_split(
    y: torch.Tensor, fraction: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split a labelled minibatch into an episode: (support indices, query indices, classes).

    Every class with at least two windows gives a random ``fraction`` of them (at least one,
    at most all but one) to the support part and the rest to the query part; classes with a
    single window are left out, since they can be neither prototype nor query alone.
    """
    support, query, classes = [], [], []
    for c in torch.unique(y).tolist():
        members = torch.nonzero(y == c).reshape(-1)
        if len(members) < 2:
            continue
        members = members[torch.randperm(len(members), generator=generator)]
        shots = min(max(1, round(fraction * len(members))), len(members) - 1)
        support.append(members[:shots])
        query.append(members[shots:])
        classes.append(c)
    if not classes:
        empty = torch.zeros(0, dtype=torch.int64)
        return empty, empty, empty
    return torch.cat(support), torch.cat(query), torch.as_tensor(classes, dtype=torch.int64)


def class_means(features: torch.Tensor, y: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class mean features (num_classes, D) and a bool mask of the classes present in ``y``."""
    sums = torch.zeros(num_classes, features.shape[1], dtype=features.dtype).index_add_(0, y, features)
    counts = torch.bincount(y, minlength=num_classes).to(features.dtype)
    present = counts > 0
    return sums / counts.clamp(min=1).unsqueeze(1), present


def floor_unknown(logits: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """``logits`` with the columns of classes that have no prototype set far below the known ones."""
    if bool(known.all()) or not bool(known.any()):
        return logits  # nothing to tell apart: all known, or an untrained model that knows none
    floor = logits[:, known].min(dim=1, keepdim=True).values - UNKNOWN_CLASS_GAP
    return torch.where(known.unsqueeze(0), logits, floor)


class ClassBank(nn.Module):
    """One vector per class from the source (a running mean over training) and, after adapt, from the target.

    Buffers, so :meth:`DomainAlgorithm.state_dict` saves them and a restored algorithm
    predicts as the saved one did: ``source`` and ``source_count`` (how many minibatches
    contributed), ``target`` and ``target_set`` (1.0 where adapt gave the class a vector).
    """

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.register_buffer("source", torch.zeros(num_classes, dim))
        self.register_buffer("source_count", torch.zeros(num_classes))
        self.register_buffer("target", torch.zeros(num_classes, dim))
        self.register_buffer("target_set", torch.zeros(num_classes))

    def observe(self, vectors: torch.Tensor, present: torch.Tensor, momentum: float) -> None:
        """Fold one minibatch's class vectors into the source running mean (exponential, like batch norm)."""
        vectors = vectors.detach()
        first = present & (self.source_count == 0)
        later = present & (self.source_count > 0)
        self.source[first] = vectors[first]
        self.source[later] = (1.0 - momentum) * self.source[later] + momentum * vectors[later]
        self.source_count += present.to(self.source_count.dtype)

    def set_target(self, vectors: torch.Tensor, present: torch.Tensor) -> None:
        """Replace the target vectors: classes in ``present`` get ``vectors``, the others fall back to the source."""
        self.target.copy_(torch.where(present.unsqueeze(1), vectors.detach(), torch.zeros_like(self.target)))
        self.target_set.copy_(present.to(self.target_set.dtype))

    def current(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The vector used per class (the target's where set, else the source's) and which classes have one."""
        has_target = self.target_set > 0
        vectors = torch.where(has_target.unsqueeze(1), self.target, self.source)
        return vectors, has_target | (self.source_count > 0)


def gaussian_mmd(a: torch.Tensor, b: torch.Tensor, gammas=(0.001, 0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)) -> torch.Tensor:
    """Squared MMD between two sets of features under a sum of Gaussian kernels (DomainBed's bandwidths)."""

    def kernel(x, z):
        distances = torch.cdist(x, z).pow(2)
        return sum(torch.exp(-g * distances) for g in gammas)

    return kernel(a, a).mean() + kernel(b, b).mean() - 2 * kernel(a, b).mean()


def network_state(algorithm: DomainAlgorithm) -> dict[str, dict[str, torch.Tensor]]:
    """A deep copy of every network's state, to restore the best one after an adapt loop."""
    return {
        attr: {key: value.detach().clone() for key, value in module.state_dict().items()}
        for attr, module in algorithm.networks().items()
    }


def restore_network_state(algorithm: DomainAlgorithm, state: dict[str, dict[str, torch.Tensor]]) -> None:
    """Load what :func:`network_state` copied back into the networks."""
    for attr, module in algorithm.networks().items():
        module.load_state_dict(state[attr])
