"""WISDM v1.1 raw accelerometer data: ``WISDM_ar_v1.1_raw.txt``.

Records are ``user,activity,timestamp,x,y,z;`` at 20 Hz. The real file ends records with
``;``, sometimes holds several records on one line, and has a few records with an empty
field and some blank lines: empty records and lines are skipped, records with an empty
field are skipped and counted in one :class:`~.common.FormatWarning`; any other deviation
(a wrong number of fields, a value that is not a number) is an error naming the line.
Timestamps are checked to be numbers but not used (the real ones repeat and jump), so rows
are taken as evenly sampled. A recording is a contiguous run of one user and one activity.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

from crossedge.core.contracts.array_dataset import ArrayData

from ..windows import Recording, Windowing
from .common import (
    FormatError,
    FormatWarning,
    LoadOptions,
    default_windowing,
    describe,
    head_lines,
    label_order,
    text_lines,
)

NAME = "wisdm"
LAYOUT = "a .txt file of 'user,activity,timestamp,x,y,z;' records (WISDM_ar_v1.1_raw.txt), or a folder holding one"
RATE = 20.0
CHANNELS = ("acc_x", "acc_y", "acc_z")
#: the activities of WISDM v1.1, in the order its paper lists them; other names are kept too
ACTIVITIES = ("Walking", "Jogging", "Upstairs", "Downstairs", "Sitting", "Standing")
OPTIONS: frozenset[str] = frozenset()
_RECORD = re.compile(r"^\s*[^,;]+,\s*[A-Za-z][^,;]*,\s*-?\d+(\.\d*)?,[^,;]*,[^,;]*,[^,;]*;?")
_FIX = "each record is 'user,activity,timestamp,x,y,z;' with numbers for user, timestamp, x, y and z"


def _file_in(path: Path) -> Path | None:
    if path.is_file():
        return path
    if path.is_dir():
        found = sorted(path.glob("WISDM_*raw*.txt"))
        return found[0] if found else None
    return None


def matches(path: Path) -> bool:
    """Whether ``path`` is a WISDM raw file, or a folder holding ``WISDM_*raw*.txt``."""
    file = _file_in(path)
    if file is None or file.suffix.lower() != ".txt":
        return False
    first = next((line for line in head_lines(file) if line.strip()), "")
    return bool(_RECORD.match(first))


def read_records(path: Path):
    """(users, activities, xyz (N, 3), line of every record) of a WISDM raw file."""
    import numpy as np

    users: list[str] = []
    activities: list[str] = []
    values: list[tuple[float, float, float]] = []
    lines: list[int] = []
    skipped, first_skipped = 0, None
    for number, line in text_lines(path):
        for record in line.split(";"):
            record = record.strip()
            if not record:
                continue
            parts = [p.strip() for p in record.split(",")]
            if len(parts) == 7 and not parts[6]:
                parts = parts[:6]  # a trailing comma before the ';'
            if len(parts) != 6:
                raise FormatError.at(path, number, f"record {record[:60]!r} has {len(parts)} fields, expected 6", _FIX)
            user, activity, stamp, *xyz = parts
            if not all(parts):
                skipped += 1
                first_skipped = first_skipped or number
                continue
            try:
                float(user), float(stamp)
                values.append((float(xyz[0]), float(xyz[1]), float(xyz[2])))
            except ValueError:
                named = zip(("user", "timestamp", "x", "y", "z"), (user, stamp, *xyz), strict=True)
                what, text = next((w, t) for w, t in named if not _is_number(t))
                raise FormatError.at(path, number, f"{what} {text!r} is not a number", _FIX) from None
            if _is_number(activity):
                raise FormatError.at(path, number, f"activity {activity!r} is a number, not a name", _FIX)
            users.append(user)
            activities.append(activity)
            lines.append(number)
    if skipped:
        warnings.warn(
            f"{path}: skipped {skipped} record(s) with an empty field (the first on line {first_skipped})",
            FormatWarning,
            stacklevel=3,
        )
    if not values:
        raise FormatError.at(path, None, "holds no records", _FIX)
    return users, activities, np.asarray(values, dtype=np.float64), lines


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def recordings(path: Path) -> list[Recording]:
    """One recording per contiguous run of one user and one activity."""
    from .common import runs

    users, activities, xyz, lines = read_records(path)
    keys = list(zip(users, activities, strict=True))
    return [
        Recording(
            signal=xyz[a:b],
            label=activities[a],
            rate=RATE,
            domains={"person": _user(users[a])},
            source=f"{path}:{lines[a]}",
        )
        for a, b in runs(keys)
    ]


def _user(text: str) -> str:
    number = float(text)
    return str(int(number)) if number.is_integer() else text


def windowing(options: LoadOptions) -> Windowing:
    """2.56 s windows (51 samples at 20 Hz) overlapping by half, unless the options say otherwise."""
    return default_windowing(options, RATE)


def load(path: Path, options: LoadOptions) -> ArrayData:
    """The windows of a WISDM raw file (or of the one in a folder)."""
    from .common import window_recordings

    file = _file_in(path)
    if file is None:
        raise FormatError.at(path, None, "holds no WISDM_*raw*.txt file", f"expected {LAYOUT}")
    found = recordings(file)
    cut = windowing(options)
    labels = label_order({r.label for r in found}, ACTIVITIES)
    data, _ = window_recordings(found, cut, label_names=labels, dataset=NAME)
    return describe(data, format=NAME, path=file, windowing=cut, rate=RATE, channels=CHANNELS)
