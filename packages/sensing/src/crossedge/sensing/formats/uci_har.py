"""UCI-HAR (Human Activity Recognition Using Smartphones): the folder its zip unpacks to.

``train|test/Inertial Signals/{body_acc,body_gyro,total_acc}_{x,y,z}_{split}.txt`` hold one
pre-cut 2.56 s window per row (128 whitespace-separated floats at 50 Hz; consecutive rows
overlap by half), ``subject_{split}.txt`` the subject of every row and ``y_{split}.txt`` its
activity id (1..6, named by ``activity_labels.txt`` when present). Every row becomes one
recording with the 9 channels of :data:`CHANNELS`; UCI's own train/test division is kept as
the splits ``train`` and ``test``.
"""

from __future__ import annotations

from pathlib import Path

from crossedge.core.contracts.array_dataset import ArrayData

from ..windows import Recording, Windowing
from .common import (
    FormatError,
    LoadOptions,
    data_line,
    default_windowing,
    describe,
    label_order,
    read_table,
    text_lines,
    window_recordings,
)

NAME = "uci-har"
LAYOUT = "a folder with train/Inertial Signals and test/Inertial Signals (UCI HAR Dataset)"
RATE = 50.0
SPLITS = ("train", "test")
SIGNALS = ("body_acc", "body_gyro", "total_acc")
#: channel order of every window
CHANNELS = tuple(f"{signal}_{axis}" for signal in SIGNALS for axis in "xyz")
#: the names used when the folder has no activity_labels.txt
ACTIVITIES = ("WALKING", "WALKING_UPSTAIRS", "WALKING_DOWNSTAIRS", "SITTING", "STANDING", "LAYING")
#: LoadOptions fields this format reads besides format, window, stride and rate
OPTIONS: frozenset[str] = frozenset()


def matches(path: Path) -> bool:
    """Whether ``path`` is a UCI-HAR folder."""
    return path.is_dir() and any((path / split / "Inertial Signals").is_dir() for split in SPLITS)


def activity_names(root: Path) -> dict[int, str]:
    """Activity id -> name, from ``activity_labels.txt`` when the folder has one, else the six standard names."""
    path = root / "activity_labels.txt"
    if not path.is_file():
        return {i: name for i, name in enumerate(ACTIVITIES, 1)}
    names: dict[int, str] = {}
    for number, line in text_lines(path):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or not parts[0].isdigit():
            raise FormatError.at(path, number, f"{line.strip()!r} is not 'ID NAME'", "write one 'ID NAME' per line")
        if int(parts[0]) in names:
            raise FormatError.at(path, number, f"activity id {parts[0]} is named twice", "name every id once")
        names[int(parts[0])] = parts[1].strip()
    if not names:
        raise FormatError.at(path, None, "names no activities", "write one 'ID NAME' per line, or delete the file")
    return names


def _ids(path: Path, what: str, known: dict[int, str] | None = None):
    """One integer per row of ``path`` (subjects or activity ids), checked against ``known``."""
    import numpy as np

    column = read_table(path, columns=1, fix=f"write one {what} per line")[:, 0]
    ids = column.astype(np.int64)
    bad = np.flatnonzero((ids != column) | ((ids < 0) if known is None else ~np.isin(ids, list(known))))
    if len(bad):
        row = int(bad[0])
        line = data_line(path, row)
        if known is not None and ids[row] == column[row]:
            listed = ", ".join(f"{k} {v}" for k, v in sorted(known.items()))
            raise FormatError.at(path, line, f"unknown activity id {ids[row]}", f"the ids are: {listed}")
        raise FormatError.at(path, line, f"{column[row]:g} is not a {what}", f"write one {what} per line")
    return ids


def read_split(root: Path, split: str, activities: dict[int, str]) -> list[Recording]:
    """The recordings (one per row) of one split folder."""
    import numpy as np

    folder = root / split
    signals = folder / "Inertial Signals"
    paths = [signals / f"{name}_{split}.txt" for name in CHANNELS]
    paths += [folder / f"subject_{split}.txt", folder / f"y_{split}.txt"]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise FormatError.at(
            missing[0],
            None,
            "is missing",
            f"a UCI-HAR split folder needs {len(paths)} files ({', '.join(CHANNELS)}"
            f" under 'Inertial Signals', subject_{split}.txt and y_{split}.txt)",
        )
    channels = [read_table(p, fix="every row holds one window of the same length") for p in paths[: len(CHANNELS)]]
    subjects = _ids(paths[-2], "subject id")
    labels = _ids(paths[-1], "activity id", activities)
    rows = len(labels)
    for path, table in [*zip(paths, channels, strict=False), (paths[-2], subjects)]:
        if len(table) != rows:
            longer, count = (path, len(table)) if len(table) > rows else (paths[-1], rows)
            raise FormatError.at(
                longer,
                data_line(longer, min(len(table), rows)),
                f"{path.name} has {len(table)} rows but y_{split}.txt has {rows}",
                "every file of a split needs one row per window",
            )
    lengths = {t.shape[1] for t in channels}
    if len(lengths) != 1:
        first = channels[0].shape[1]
        other = next(p for p, t in zip(paths, channels, strict=False) if t.shape[1] != first)
        raise FormatError.at(
            other,
            1,
            f"rows hold {channels[paths.index(other)].shape[1]} samples, {paths[0].name}'s hold {first}",
            "every signal file needs windows of the same length",
        )
    stacked = np.stack(channels, axis=2)  # (rows, T, 9)
    source = paths[-1]
    return [
        Recording(
            signal=stacked[i],
            label=activities[int(labels[i])],
            rate=RATE,
            domains={"person": str(int(subjects[i]))},
            source=f"{source}:{i + 1}",
        )
        for i in range(rows)
    ]


def windowing(options: LoadOptions, row: int = 128) -> Windowing:
    """One window per row by default (at another ``rate``, the row's resampled length); stride: the window."""
    target = options.rate or RATE
    # the resampled row's own length, so one row still gives exactly one window
    length = row if target == RATE else int((row - 1) / RATE * target + 1e-9) + 1
    return default_windowing(options, RATE, length=length, overlap=0.0)


def load(path: Path, options: LoadOptions) -> ArrayData:
    """The windows of a UCI-HAR folder, with UCI's train/test as splits."""
    import numpy as np

    if not matches(path):
        raise FormatError.at(path, None, "is not a UCI-HAR folder", f"expected {LAYOUT}")
    activities = activity_names(path)
    recordings: list[Recording] = []
    split_of: list[str] = []
    for split in SPLITS:
        if (path / split).is_dir():
            part = read_split(path, split, activities)
            recordings += part
            split_of += [split] * len(part)
    cut = windowing(options, row=len(recordings[0].signal))
    labels = label_order({r.label for r in recordings}, [activities[k] for k in sorted(activities)])
    data, origin = window_recordings(recordings, cut, label_names=labels, dataset=NAME)
    present = [s for s in SPLITS if s in split_of]
    codes = np.array([present.index(s) for s in split_of], dtype=np.int64)[origin]
    data.splits = {s: np.flatnonzero(codes == i).astype(np.int64) for i, s in enumerate(present)}
    data.partitions = [tuple(present)]
    return describe(data, format=NAME, path=path, windowing=cut, rate=RATE, channels=CHANNELS)
