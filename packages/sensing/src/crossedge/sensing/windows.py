"""Recordings to windows: resampling to a common rate, segmentation, and the sensing domain table.

Every sensing dataset, whether it comes from a wheel, a folder on disk or a generator, ends
as :class:`Recording` objects (one continuous signal, one activity label, its domain
values) and goes through :func:`windows_from_recordings`, so all of them share one
windowing rule and one domain table with the columns of :data:`DOMAIN_COLUMNS`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from crossedge.core.contracts.array_dataset import ArrayData, ArrayDatasetError, DomainTable

if TYPE_CHECKING:
    import numpy as np

#: The domain columns of every sensing dataset; a dataset that does not know one says "unknown".
DOMAIN_COLUMNS = ("person", "position", "device", "room", "session", "dataset")
UNKNOWN = "unknown"


class WindowingError(ArrayDatasetError):
    """Windowing options are invalid, or no recording is long enough for one window."""


@dataclass
class Recording:
    """One continuous multichannel signal with one label: ``signal`` is (T, C), sampled at ``rate`` Hz."""

    signal: np.ndarray
    label: str
    rate: float
    domains: dict[str, str] = field(default_factory=dict)
    #: where it came from (a file name, ``file:line``), for error messages
    source: str = ""


@dataclass(frozen=True)
class Windowing:
    """How recordings become windows: ``length`` and ``stride`` in samples at ``rate`` Hz.

    ``rate=None`` keeps each recording's own rate (they must then agree); otherwise every
    recording is resampled to ``rate`` first. ``stride=None`` means non-overlapping windows.
    """

    length: int
    stride: int | None = None
    rate: float | None = None

    def __post_init__(self):
        if self.length < 1:
            raise WindowingError(f"window length must be at least 1 sample, got {self.length}")
        if self.stride is not None and self.stride < 1:
            raise WindowingError(f"window stride must be at least 1 sample, got {self.stride}")
        if self.rate is not None and self.rate <= 0:
            raise WindowingError(f"resampling rate must be positive, got {self.rate}")

    @property
    def step(self) -> int:
        """The stride in samples (the length when no stride was given)."""
        return self.stride or self.length


def resample(signal: np.ndarray, rate: float, target: float) -> np.ndarray:
    """``signal`` (T, C) at ``rate`` Hz resampled to ``target`` Hz by linear interpolation per channel."""
    import numpy as np

    signal = np.asarray(signal, dtype=np.float64)
    if rate == target or len(signal) < 2:
        return signal
    duration = (len(signal) - 1) / rate
    count = int(np.floor(duration * target + 1e-9)) + 1
    old = np.arange(len(signal)) / rate
    new = np.arange(count) / target
    return np.stack([np.interp(new, old, signal[:, c]) for c in range(signal.shape[1])], axis=1)


def segment(signal: np.ndarray, length: int, step: int) -> np.ndarray:
    """Windows (W, length, C) cut from ``signal`` (T, C) every ``step`` samples; a short tail is dropped."""
    import numpy as np

    if len(signal) < length:
        return np.zeros((0, length, signal.shape[1]), dtype=np.float32)
    starts = range(0, len(signal) - length + 1, step)
    return np.stack([signal[s : s + length] for s in starts]).astype(np.float32)


def windows_from_recordings(
    recordings: Iterable[Recording],
    windowing: Windowing,
    *,
    label_names: Sequence[str] | None = None,
    dataset: str,
) -> ArrayData:
    """Window every recording and build the arrays with the :data:`DOMAIN_COLUMNS` domain table.

    ``label_names`` fixes the label order (a recording with another label is an error);
    without it, labels are sorted by name. ``dataset`` fills the ``dataset`` column of
    recordings that do not set it. Recordings shorter than one window are skipped; if every
    one is, the error says how long the longest was.
    """
    import numpy as np

    recordings = list(recordings)
    if not recordings:
        raise WindowingError(f"{dataset}: no recordings to window")
    channels = {r.signal.shape[1] if r.signal.ndim == 2 else None for r in recordings}
    if None in channels or len(channels) != 1:
        shapes = sorted({str(r.signal.shape) for r in recordings})[:4]
        raise WindowingError(f"{dataset}: recordings need one (T, C) shape with the same C, got {', '.join(shapes)}")
    rates = {float(r.rate) for r in recordings}
    if windowing.rate is None and len(rates) > 1:
        raise WindowingError(f"{dataset}: recordings have different rates {sorted(rates)} Hz; give a resampling rate")
    names = tuple(label_names) if label_names is not None else tuple(sorted({r.label for r in recordings}))
    values: dict[str, list[str]] = {c: [] for c in DOMAIN_COLUMNS}
    xs, ys, codes = [], [], {c: [] for c in DOMAIN_COLUMNS}
    longest = 0
    for recording in recordings:
        if recording.label not in names:
            where = f" ({recording.source})" if recording.source else ""
            raise WindowingError(
                f"{dataset}: label {recording.label!r}{where} is not one of {', '.join(map(str, names))}"
            )
        signal = recording.signal
        if windowing.rate is not None:
            signal = resample(signal, recording.rate, windowing.rate)
        longest = max(longest, len(signal))
        cut = segment(np.asarray(signal), windowing.length, windowing.step)
        if not len(cut):
            continue
        if not np.isfinite(cut).all():
            raise WindowingError(f"{dataset}: {recording.source or 'a recording'} holds NaN or infinite samples")
        xs.append(cut)
        ys.append(np.full(len(cut), names.index(recording.label), dtype=np.int64))
        for column in DOMAIN_COLUMNS:
            value = str(recording.domains.get(column, dataset if column == "dataset" else UNKNOWN))
            if value not in values[column]:
                values[column].append(value)
            codes[column].append(np.full(len(cut), values[column].index(value), dtype=np.int64))
    if not xs:
        raise WindowingError(
            f"{dataset}: no recording is long enough for one window of {windowing.length} samples "
            f"(the longest has {longest}); use a shorter --window"
        )
    order = {c: sorted(range(len(v)), key=lambda i, v=v: natural_key(v[i])) for c, v in values.items()}
    columns, value_names = {}, {}
    for column in DOMAIN_COLUMNS:
        # codes follow the sorted value names, so the table does not depend on file order
        remap = np.empty(len(values[column]), dtype=np.int64)
        for new, old in enumerate(order[column]):
            remap[old] = new
        columns[column] = remap[np.concatenate(codes[column])]
        value_names[column] = tuple(values[column][i] for i in order[column])
    return ArrayData(
        # C order: safetensors writes the buffer as laid out, the manifest hashes C-order bytes
        x=np.ascontiguousarray(np.concatenate(xs), dtype=np.float32),
        y=np.concatenate(ys),
        label_names=names,
        domains=DomainTable(columns=columns, values=value_names),
    )


def natural_key(text: str) -> tuple:
    """Sort key that puts ``p2`` before ``p10``."""
    import re

    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text))


def domain_summary(data: ArrayData) -> dict[str, dict[str, int]]:
    """Windows per value of every domain column with more than one value."""
    import numpy as np

    summary = {}
    for column in data.domains.names():
        names = data.domains.values[column]
        if len(names) < 2:
            continue
        counts = np.bincount(data.domains.codes(column), minlength=len(names))
        summary[column] = {name: int(count) for name, count in zip(names, counts, strict=True)}
    return summary
