"""PAMAP2 Physical Activity Monitoring: ``Protocol/subject10X.dat``.

Each row has 54 space-separated columns at 100 Hz: timestamp (s), activity id, heart rate,
then 17 columns for each of three IMUs (hand, chest, ankle): temperature, acc16 xyz, acc6
xyz, gyro xyz, mag xyz and 4 orientation values. Missing values are ``NaN``. Activity 0
(transient) is dropped; every other contiguous activity run is a recording. Runs of missing
samples up to ``max_gap`` long are interpolated; a longer one splits the recording there.

``channels`` picks sensor groups per IMU (default acc16 and gyro); ``imu`` picks the IMUs:
``all`` concatenates the three (position unknown), ``hand``/``chest``/``ankle`` takes one
(position set), ``each`` makes one recording per IMU with its position, for cross-position
scenarios.
"""

from __future__ import annotations

import re
from pathlib import Path

from crossedge.core.contracts.array_dataset import ArrayData

from ..windows import Recording, Windowing
from .common import (
    FormatError,
    LoadOptions,
    code_runs,
    data_line,
    default_windowing,
    describe,
    label_order,
    read_table,
    window_recordings,
)

NAME = "pamap2"
LAYOUT = "a PAMAP2 folder with Protocol/subject10X.dat (or those .dat files themselves)"
RATE = 100.0
COLUMNS = 54
ACTIVITIES = {
    1: "lying",
    2: "sitting",
    3: "standing",
    4: "walking",
    5: "running",
    6: "cycling",
    7: "nordic_walking",
    9: "watching_tv",
    10: "computer_work",
    11: "car_driving",
    12: "ascending_stairs",
    13: "descending_stairs",
    16: "vacuum_cleaning",
    17: "ironing",
    18: "folding_laundry",
    19: "house_cleaning",
    20: "playing_soccer",
    24: "rope_jumping",
}
TRANSIENT = 0
IMUS = {"hand": 3, "chest": 20, "ankle": 37}
#: sensor group -> its columns within one IMU's 17
GROUPS = {
    "temperature": (0,),
    "acc16": (1, 2, 3),
    "acc6": (4, 5, 6),
    "gyro": (7, 8, 9),
    "mag": (10, 11, 12),
    "orientation": (13, 14, 15, 16),
}
_AXES = {"temperature": ("",), "orientation": ("0", "1", "2", "3")} | {
    g: "xyz" for g in ("acc16", "acc6", "gyro", "mag")
}
DEFAULT_CHANNELS = ("acc16", "gyro")
OPTIONS = frozenset({"imu", "channels", "max_gap"})
_SUBJECT = re.compile(r"^subject(\d+)\.dat$", re.IGNORECASE)


def subject_files(path: Path) -> list[Path]:
    """The ``subjectNNN.dat`` files of a PAMAP2 folder, its Protocol folder, or one such file."""
    if path.is_file():
        return [path] if _SUBJECT.match(path.name) else []
    folder = path / "Protocol" if (path / "Protocol").is_dir() else path
    return sorted((p for p in folder.glob("*.dat") if _SUBJECT.match(p.name)), key=lambda p: p.name)


def matches(path: Path) -> bool:
    """Whether ``path`` holds PAMAP2 subject files."""
    return bool(subject_files(path))


def channel_names(options: LoadOptions) -> list[tuple[str, list[str], list[int]]]:
    """(position, channel names, column indices) of every recording view the options ask for."""
    groups = options.channels or DEFAULT_CHANNELS
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise FormatError(
            f"pamap2 has no sensor group {unknown[0]!r} (option channels); its groups are: {', '.join(GROUPS)}"
        )
    imus = list(IMUS) if options.imu in ("all", "each") else [options.imu]
    views = []
    for imu in imus:
        names = [f"{imu}_{g}" + (f"_{a}" if a else "") for g in groups for a in _AXES[g]]
        columns = [IMUS[imu] + c for g in groups for c in GROUPS[g]]
        views.append((imu, names, columns))
    if options.imu == "all":
        return [("unknown", [n for v in views for n in v[1]], [c for v in views for c in v[2]])]
    return views


def fill_gaps(signal, max_gap: int) -> list[tuple[int, int]]:
    """Interpolate, in place, missing rows in runs of at most ``max_gap``; (start, stop) of the usable stretches."""
    import numpy as np

    bad = ~np.isfinite(signal).all(axis=1)
    if not bad.any():
        return [(0, len(signal))]
    pieces, start = [], 0
    for a, b in code_runs(bad.astype(np.int8)):
        if not bad[a]:
            continue
        # a gap at either end cannot be interpolated, and a long one would be invented data
        if a == 0 or b == len(signal) or b - a > max_gap:
            if a > start:
                pieces.append((start, a))
            start = b
    if start < len(signal):
        pieces.append((start, len(signal)))
    for a, b in pieces:
        part = signal[a:b]
        for c in range(part.shape[1]):
            column = part[:, c]
            known = np.isfinite(column)
            if not known.all():
                column[~known] = np.interp(np.flatnonzero(~known), np.flatnonzero(known), column[known])
    return pieces


def read_subject(path: Path, options: LoadOptions) -> list[Recording]:
    """The recordings of one subject file."""
    import numpy as np

    table = read_table(path, columns=COLUMNS, fix=f"each row holds {COLUMNS} space-separated numbers (NaN if missing)")
    activity = table[:, 1]
    ids = np.where(np.isfinite(activity), activity, -1).astype(np.int64)
    bad = np.flatnonzero((ids != activity) | ~np.isin(ids, [TRANSIENT, *ACTIVITIES]))
    if len(bad):
        row = int(bad[0])
        listed = ", ".join(f"{k} {v}" for k, v in ACTIVITIES.items())
        raise FormatError.at(
            path, data_line(path, row), f"unknown activity id {activity[row]:g}", f"the ids are 0 (transient), {listed}"
        )
    person = _SUBJECT.match(path.name)[1]
    found = []
    for a, b in code_runs(ids):
        if ids[a] == TRANSIENT:
            continue
        for position, _, columns in channel_names(options):
            signal = table[a:b, columns].copy()
            for c, d in fill_gaps(signal, options.max_gap):
                domains = {"person": person}
                if position != "unknown":
                    domains["position"] = position
                found.append(
                    Recording(
                        signal=signal[c:d],
                        label=ACTIVITIES[int(ids[a])],
                        rate=RATE,
                        domains=domains,
                        source=f"{path} rows {a + c + 1}-{a + d}",
                    )
                )
    return found


def windowing(options: LoadOptions) -> Windowing:
    """2.56 s windows (256 samples at 100 Hz) overlapping by half, unless the options say otherwise."""
    return default_windowing(options, RATE)


def load(path: Path, options: LoadOptions) -> ArrayData:
    """The windows of every PAMAP2 subject file under ``path``."""
    files = subject_files(path)
    if not files:
        raise FormatError.at(path, None, "holds no PAMAP2 subjectNNN.dat files", f"expected {LAYOUT}")
    views = channel_names(options)  # refuses a bad channels option before any file is read
    found = [r for file in files for r in read_subject(file, options)]
    if not found:
        raise FormatError.at(path, None, "holds only transient rows (activity 0)", "check that this is PAMAP2 data")
    cut = windowing(options)
    labels = label_order({r.label for r in found}, list(ACTIVITIES.values()))
    data, _ = window_recordings(found, cut, label_names=labels, dataset=NAME)
    # with imu=each every view has the same channels, named here without their position
    channels = [n.split("_", 1)[1] for n in views[0][1]] if options.imu == "each" else views[0][1]
    return describe(data, format=NAME, path=path, windowing=cut, rate=RATE, channels=channels)
