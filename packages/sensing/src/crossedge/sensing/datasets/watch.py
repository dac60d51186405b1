"""seglearn's smartwatch shoulder-exercise recordings (``seglearn.datasets.load_watch``), as windows."""

from __future__ import annotations

from pathlib import Path

from crossedge.core.contracts.array_dataset import ArrayData, ArrayDataset

from .wheels import WheelDataError, read_pinned, wheel_file

DISTRIBUTION = "seglearn"
PINNED_VERSION = "1.2.5"
DATA_FILE = "seglearn/data/watch_dataset.npy"
#: the file's SHA-256 in the seglearn 1.2.5 wheel (its RECORD lists the same digest)
DATA_SHA256 = "eb122f23cdf06ef6bd6c6c5312958ec5cf9d038e2e6d457b8081662c75a42537"
RATE_HZ = 50.0
SIDES = ("left-wrist", "right-wrist")


class WatchDataset(ArrayDataset):
    """seglearn 1.2.5's 6-axis smartwatch data: 140 recordings of 7 shoulder exercises by 10 people.

    Each recording (``ax, ay, az, wx, wy, wz`` at 50 Hz, 947 to 2618 samples) is one set of
    20 repetitions of one exercise: PEN (pendulum), ABD (abduction), FEL (forward
    elevation), IR / ER (internal / external rotation), TRAP (trapezius extension), ROW
    (upright row). Domains: ``person`` = the study subject (``p1`` .. ``p10``), ``position``
    = the wrist the watch was worn on (``left-wrist`` / ``right-wrist``, seglearn's ``side``
    0 / 1); device, room and session are ``unknown``. Windows are 2 s (100 samples) with
    50% overlap (a stride of 50), 4677 in all; there are no predefined splits, scenarios
    come from the domain columns (cross-person, cross-position).

    The file is read from the installed seglearn wheel only after its version is 1.2.5 and
    the file's SHA-256 equals the pinned one; it is a pickled NumPy object, so no other
    file is ever loaded this way.
    """

    name = "watch"
    description = (
        "seglearn 1.2.5 smartwatch: 7 shoulder exercises, 10 persons, left/right wrist, "
        "6-axis IMU at 50 Hz, 2 s windows with 50% overlap"
    )
    version = PINNED_VERSION
    recipe_version = "1"
    label_names = ("PEN", "ABD", "FEL", "IR", "ER", "TRAP", "ROW")
    #: window length and stride in samples at 50 Hz
    window = 100
    stride = 50

    def source_files(self) -> list[Path]:
        """The data file inside the installed seglearn 1.2.5 wheel (refused for any other version)."""
        return [wheel_file(DISTRIBUTION, PINNED_VERSION, DATA_FILE, self.name)]

    def recipe(self) -> ArrayData:
        """Check the wheel's file against its pinned hash, then window every recording."""
        import io

        import numpy as np

        from ..windows import Recording, Windowing, windows_from_recordings

        (path,) = self.source_files()
        raw = read_pinned(path, DATA_SHA256, distribution=DISTRIBUTION, version=PINNED_VERSION, dataset=self.name)
        # a pickled object array; the bytes were just checked against the wheel's pinned SHA-256
        data = np.load(io.BytesIO(raw), allow_pickle=True).item()
        self._check_layout(data, path)
        labels = list(data["y_labels"])
        recordings = [
            Recording(
                signal=np.asarray(signal, dtype=np.float64),
                label=labels[int(label)],
                rate=RATE_HZ,
                domains={"person": f"p{int(subject)}", "position": SIDES[int(side)]},
                source=f"{path.name}[{i}]",
            )
            for i, (signal, label, subject, side) in enumerate(
                zip(data["X"], data["y"], data["subject"], data["side"], strict=True)
            )
        ]
        return windows_from_recordings(
            recordings,
            Windowing(length=self.window, stride=self.stride),
            label_names=self.label_names,
            dataset=self.name,
        )

    def _check_layout(self, data: object, path: Path) -> None:
        """Refuse a file whose contents are not seglearn's watch layout (it cannot happen with the pinned hash)."""
        keys = {"X", "y", "y_labels", "subject", "side"}
        if not isinstance(data, dict) or not keys <= set(data):
            raise WheelDataError(f"dataset {self.name!r}: {path} does not hold seglearn's watch dictionary")
        if tuple(data["y_labels"]) != self.label_names:
            raise WheelDataError(
                f"dataset {self.name!r}: {path} names the exercises {tuple(data['y_labels'])}, "
                f"expected {self.label_names}"
            )


WATCH = WatchDataset()
