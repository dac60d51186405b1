"""MotionSense device-motion data: ``A_DeviceMotion_data/<act>_<trial>/sub_<n>.csv``.

Every CSV is one recording at 50 Hz with a header (an unnamed index column, then
``attitude.roll``, ..., ``gravity.x``, ..., ``rotationRate.x``, ..., ``userAcceleration.x``,
...). The activity is the trial folder's prefix (dws, ups, wlk, jog, sit, std), the person
is ``n`` of ``sub_<n>.csv`` and the session is the trial number. ``feature_columns`` picks
columns by glob; the default is user acceleration then rotation rate (6 channels, like the
other IMU formats).
"""

from __future__ import annotations

import re
from pathlib import Path

from crossedge.core.contracts.array_dataset import ArrayData

from ..windows import Recording, Windowing
from .common import (
    FormatError,
    LoadOptions,
    default_windowing,
    describe,
    label_order,
    match_columns,
    read_csv,
    window_recordings,
)

NAME = "motionsense"
LAYOUT = "a folder holding A_DeviceMotion_data/<act>_<trial>/sub_<n>.csv (MotionSense)"
RATE = 50.0
FOLDER = "A_DeviceMotion_data"
ACTIVITIES = {
    "dws": "downstairs",
    "ups": "upstairs",
    "wlk": "walking",
    "jog": "jogging",
    "sit": "sitting",
    "std": "standing",
}
DEFAULT_FEATURES = ("userAcceleration.*", "rotationRate.*")
OPTIONS = frozenset({"feature_columns"})
_TRIAL = re.compile(r"^([A-Za-z]+)_(\d+)$")
_SUBJECT = re.compile(r"^sub_(\d+)\.csv$", re.IGNORECASE)


def data_folder(path: Path) -> Path | None:
    """The ``A_DeviceMotion_data`` folder: ``path`` itself or a child of it (the zip nests it in itself)."""
    if not path.is_dir() or (path.name != FOLDER and not (path / FOLDER).is_dir()):
        return None
    while (path / FOLDER).is_dir():
        path = path / FOLDER
    return path


def matches(path: Path) -> bool:
    """Whether ``path`` is (or holds) a MotionSense ``A_DeviceMotion_data`` folder."""
    return data_folder(path) is not None


def files(folder: Path) -> list[tuple[Path, str, str, str]]:
    """(file, activity, trial, person) of every ``sub_<n>.csv`` under the trial folders."""
    found = []
    # hidden folders and the __MACOSX folder of a zip made on a Mac are not trials
    for trial in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))):
        parsed = _TRIAL.match(trial.name)
        if not parsed or parsed[1].lower() not in ACTIVITIES:
            raise FormatError.at(
                trial,
                None,
                "is not an '<act>_<trial>' folder",
                f"name trial folders like wlk_7, with <act> one of {', '.join(ACTIVITIES)}, or move this one out",
            )
        for file in sorted(trial.iterdir()):
            subject = _SUBJECT.match(file.name)
            if subject and file.is_file():
                found.append((file, ACTIVITIES[parsed[1].lower()], parsed[2], subject[1]))
    return found


def read_file(file: Path, patterns: tuple[str, ...]) -> tuple[list[str], object]:
    """(channel names, signal (T, C)) of one subject CSV."""
    table = read_csv(file)
    indices = match_columns(table.header, patterns, path=file, option="feature_columns")
    return [table.header[i] for i in indices], table.numbers(indices)


def windowing(options: LoadOptions) -> Windowing:
    """2.56 s windows (128 samples at 50 Hz) overlapping by half, unless the options say otherwise."""
    return default_windowing(options, RATE)


def load(path: Path, options: LoadOptions) -> ArrayData:
    """The windows of every subject CSV of a MotionSense folder."""
    folder = data_folder(path)
    if folder is None:
        raise FormatError.at(path, None, f"holds no {FOLDER} folder", f"expected {LAYOUT}")
    listed = files(folder)
    if not listed:
        raise FormatError.at(folder, None, "holds no <act>_<trial>/sub_<n>.csv files", f"expected {LAYOUT}")
    patterns = options.feature_columns or DEFAULT_FEATURES
    recordings, channels = [], None
    for file, activity, trial, person in listed:
        names, signal = read_file(file, patterns)
        if channels is None:
            channels, first = names, file
        elif names != channels:
            raise FormatError.at(
                file, 1, f"its columns {names} differ from {first}'s {channels}", "give every file the same header"
            )
        recordings.append(
            Recording(
                signal=signal,
                label=activity,
                rate=RATE,
                domains={"person": person, "session": trial},
                source=str(file),
            )
        )
    cut = windowing(options)
    labels = label_order({r.label for r in recordings}, list(ACTIVITIES.values()))
    data, _ = window_recordings(recordings, cut, label_names=labels, dataset=NAME)
    return describe(data, format=NAME, path=folder, windowing=cut, rate=RATE, channels=channels)
