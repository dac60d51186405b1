"""Equal error rate (EER) of a detector from its scores and binary labels, by an ROC sweep.

Label 1 is the positive class (bona fide speech in the deepfake task) and a higher score
means "more positive". Sweeping the threshold from above the highest score down to the
lowest gives the ROC points (false positive rate, false negative rate); the false negative
rate falls and the false positive rate rises, so their difference changes sign once. The EER
is where they are equal, found on the segment between the two ROC points around the sign
change by linear interpolation (tied scores form one step, as a diagonal segment).

torchmetrics' ``BinaryEER`` instead takes the ROC point where ``|FPR - FNR|`` is smallest and
averages the two rates there; both agree where the rates meet at an ROC point and differ by
at most one step (``1 / min(positives, negatives)``) elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from crossedge.core.errors import CrossedgeError


class EERError(CrossedgeError, ValueError):
    """Scores and labels from which no equal error rate can be computed."""


@dataclass(frozen=True)
class ROCPoints:
    """ROC points from the strictest threshold to the loosest: ``thresholds[i]`` accepts ``score >= thresholds[i]``."""

    thresholds: np.ndarray
    false_positive_rate: np.ndarray
    false_negative_rate: np.ndarray


@dataclass(frozen=True)
class EqualErrorRate:
    """The equal error rate and the (interpolated) score threshold where it is reached."""

    eer: float
    threshold: float


def _as_arrays(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    if hasattr(scores, "detach"):
        scores = scores.detach().cpu().numpy()
    if hasattr(labels, "detach"):
        labels = labels.detach().cpu().numpy()
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    if s.shape != y.shape:
        raise EERError(f"EER needs one label per score; got {s.size} scores and {y.size} labels")
    if not np.all(np.isfinite(s)):
        raise EERError("EER scores contain NaN or infinity; fix the model's outputs before scoring")
    if not np.isin(y, (0, 1)).all():
        raise EERError(f"EER labels must be 0 or 1; got values {sorted(set(np.unique(y).tolist()))[:5]}")
    y = y.astype(bool)
    if y.all() or not y.any():
        raise EERError(f"EER needs both classes; all {y.size} labels are {int(y[0]) if y.size else 'missing'}")
    return s, y


def roc_points(scores: Any, labels: Any) -> ROCPoints:
    """The ROC points of ``scores`` against binary ``labels``, starting at the threshold that accepts nothing."""
    s, y = _as_arrays(scores, labels)
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    # one ROC point per distinct score: ties move both rates in one step
    last_of_tie = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]
    true_pos = np.cumsum(y)[last_of_tie]
    false_pos = np.cumsum(~y)[last_of_tie]
    positives, negatives = int(y.sum()), int((~y).sum())
    fpr = np.r_[0.0, false_pos / negatives]
    fnr = np.r_[1.0, 1.0 - true_pos / positives]
    thresholds = np.r_[np.inf, s[last_of_tie]]
    return ROCPoints(thresholds, fpr, fnr)


def equal_error_rate(scores: Any, labels: Any) -> EqualErrorRate:
    """The EER of ``scores`` (higher = positive) against ``labels`` (1 = positive), interpolated at the crossing."""
    roc = roc_points(scores, labels)
    gap = roc.false_negative_rate - roc.false_positive_rate  # 1 at the start, -1 at the end, never rising
    k = int(np.argmax(gap <= 0))
    if gap[k] == 0:
        return EqualErrorRate(float(roc.false_positive_rate[k]), float(roc.thresholds[k]))
    step = gap[k - 1] / (gap[k - 1] - gap[k])
    fpr0, fpr1 = roc.false_positive_rate[k - 1], roc.false_positive_rate[k]
    eer = fpr0 + step * (fpr1 - fpr0)
    upper = roc.thresholds[k - 1]
    # the first segment starts at +inf: report the score where acceptance begins
    threshold = roc.thresholds[k] if not np.isfinite(upper) else upper + step * (roc.thresholds[k] - upper)
    return EqualErrorRate(float(eer), float(threshold))


def eer(scores: Any, labels: Any) -> float:
    """The equal error rate as a number in [0, 1]."""
    return equal_error_rate(scores, labels).eer
