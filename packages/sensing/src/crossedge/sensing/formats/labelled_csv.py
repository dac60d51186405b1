"""A generic labelled CSV: one sample per row, a label column, feature columns, optional group and time columns.

``label_column`` (default: a column named label, activity, gesture, action or class) holds
the activity; ``feature_columns`` picks the channels by glob (``'csi_*'``,
``'acc_x,acc_y,acc_z'``; default every other column but time, timestamp, seq and index);
``group_column`` names the column whose values are the person, or maps columns to domains
(``'subject=person,env=room'``); columns named after a domain it leaves unclaimed (person,
room, ... or user/subject) set it without being asked, as do folders like ``person_3``. ``time_column``
(in ``time_unit``) places rows on a uniform grid by time; without it rows are taken as
evenly sampled at ``source_rate`` (default 50 Hz). A path may be one CSV or a folder of
them. A recording is a contiguous run of one label and one set of domain values in one file.
"""

from __future__ import annotations

from pathlib import Path

from crossedge.core.contracts.array_dataset import ArrayData

from ..windows import Recording, Windowing
from .common import (
    LABEL_COLUMNS,
    TIME_UNITS,
    FormatError,
    LoadOptions,
    default_windowing,
    describe,
    domain_mapping,
    files_under,
    folder_parts,
    label_order,
    match_columns,
    read_csv,
    regrid_all,
    runs,
    window_recordings,
)

NAME = "labelled-csv"
LAYOUT = "a CSV file with a header and a label column (or a folder of them)"
RATE = 50.0
#: columns left out of the default features: counters and clocks would let a model read the time
NOT_FEATURES = ("time", "timestamp", "seq", "index")
OPTIONS = frozenset({"label_column", "feature_columns", "group_column", "time_column", "time_unit", "source_rate"})


def matches(path: Path) -> bool:
    """Whether ``path`` is a CSV file or a folder holding one."""
    if path.is_file():
        return path.suffix.lower() == ".csv"
    return path.is_dir() and bool(files_under(path, (".csv",)))


def read_file(path: Path, root: Path, options: LoadOptions):
    """(feature names, signal, labels, domains per row, times or None, line numbers) of one CSV."""
    table = read_csv(path)
    lowered = [h.lower() for h in table.header]
    if options.label_column is None:
        found = next((c for c in LABEL_COLUMNS if c in lowered), None)
        if found is None:
            raise FormatError.at(
                path,
                1,
                f"has no label column (none is named {', '.join(LABEL_COLUMNS)})",
                f"name it with --label-column; the columns are: {', '.join(table.header)}",
            )
    label_at = table.index(options.label_column or found, option="label_column")
    mapping = domain_mapping(table.header, options.group_column, skip=[label_at])
    group_at = {domain: table.index(column, option="group_column") for column, domain in mapping.items()}
    time_at = table.index(options.time_column, option="time_column") if options.time_column else None
    reserved = {label_at, time_at, *group_at.values()}
    if options.feature_columns:
        chosen = match_columns(table.header, options.feature_columns, path=path, option="feature_columns")
    else:
        chosen = [i for i, name in enumerate(table.header) if name and name.lower() not in NOT_FEATURES]
    features = [i for i in chosen if i not in reserved]
    if not features:
        raise FormatError.at(path, 1, "has no feature columns left", "choose them with --feature-columns")
    signal = table.numbers(features, what="feature")
    labels = [row[label_at].strip() for row in table.rows]
    for i, label in enumerate(labels):
        if not label:
            raise FormatError.at(
                path,
                table.lines[i],
                f"the label in column {table.header[label_at]!r} is empty",
                ("fill it or delete the row"),
            )
    folder_domains, _ = folder_parts(root, path)
    domains = {d: [v] * len(labels) for d, v in folder_domains.items()}
    for domain, at in group_at.items():
        domains[domain] = [row[at].strip() or "unknown" for row in table.rows]
    times = None
    if time_at is not None:
        times = table.numbers([time_at], what="time")[:, 0] * TIME_UNITS[options.time_unit]
    return [table.header[i] for i in features], signal, labels, domains, times, table.lines


def windowing(options: LoadOptions, rate: float | None = None) -> Windowing:
    """2.56 s windows at the target rate (128 samples at 50 Hz) overlapping by half, unless options say otherwise."""
    return default_windowing(options, rate or options.source_rate or RATE)


def load(path: Path, options: LoadOptions) -> ArrayData:
    """The windows of one labelled CSV or of every CSV under a folder."""
    files = files_under(path, (".csv",))
    if not files:
        raise FormatError.at(path, None, "holds no .csv files", f"expected {LAYOUT}")
    root = path
    pieces, channels, first = [], None, None
    for file in files:
        names, signal, labels, domains, times, lines = read_file(file, root, options)
        if channels is None:
            channels, first = names, file
        elif names != channels:
            raise FormatError.at(
                file,
                1,
                f"its feature columns {names} differ from {first}'s {channels}",
                "give every file the same columns, or choose them with --feature-columns",
            )
        keys = list(zip(labels, *domains.values(), strict=True))
        for a, b in runs(keys):
            recording = Recording(
                signal=signal[a:b],
                label=labels[a],
                rate=options.source_rate or RATE,
                domains={d: v[a] for d, v in domains.items()},
                source=f"{file}:{lines[a]}",
            )
            pieces.append((recording, None if times is None else times[a:b], lines[a:b], file))
    recordings, timed_rate = regrid_all(pieces, options.rate)
    rate = timed_rate or options.source_rate or RATE
    cut = windowing(options, rate)
    labels = label_order({r.label for r in recordings})
    data, _ = window_recordings(recordings, cut, label_names=labels, dataset=NAME)
    return describe(data, format=NAME, path=path, windowing=cut, rate=rate, channels=channels)
