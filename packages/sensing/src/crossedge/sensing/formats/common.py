"""What every format loader shares: the error, the options, tables read with line numbers, label runs, windowing.

Loaders read numbers through :func:`read_table` (numpy's C parser on the fast path; on a
failure, a line-by-line rescan that names the first bad line), cut labelled streams into
contiguous same-label runs with :func:`runs`, and window through :func:`window_recordings`,
which also says which recording every window came from (UCI-HAR's splits need that).

numpy is imported inside functions, so importing this package costs nothing until a path
is loaded.
"""

from __future__ import annotations

import csv
import fnmatch
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from crossedge.core.contracts.array_dataset import ArrayData, ArrayDatasetError
from crossedge.core.errors import CrossedgeWarning

from ..windows import DOMAIN_COLUMNS, Recording, Windowing, windows_from_recordings

if TYPE_CHECKING:
    import numpy as np

#: Domain columns a file or folder may set; ``dataset`` is always the format's name.
SETTABLE_DOMAINS = tuple(c for c in DOMAIN_COLUMNS if c != "dataset")
TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
IMU_CHOICES = ("all", "hand", "chest", "ankle", "each")
#: column names (lower case) taken as the label when no label column is named
LABEL_COLUMNS = ("label", "activity", "gesture", "action", "class")
#: column names (lower case) that set a domain without being asked
DOMAIN_ALIASES = {**{d: d for d in SETTABLE_DOMAINS}, "user": "person", "subject": "person"}


class FormatError(ArrayDatasetError):
    """A file does not follow its format, or load options do not fit it: ``path:LINE: what is wrong; what to do``."""

    def __init__(self, message: str, *, path: Path | str | None = None, line: int | None = None):
        super().__init__(message)
        self.path = None if path is None else str(path)
        self.line = line

    @classmethod
    def at(cls, path: Path | str, line: int | None, problem: str, fix: str) -> FormatError:
        """The error for ``path`` (at ``line``, 1-based, when known): ``path:LINE: problem; fix``."""
        where = f"{path}:{line}" if line else f"{path}"
        return cls(f"{where}: {problem}; {fix}", path=path, line=line)


class FormatWarning(CrossedgeWarning):
    """A loader skipped something a real file is known to contain (empty records, say); the message counts them."""


@dataclass
class LoadOptions:
    """How :func:`~crossedge.sensing.formats.load_path` reads a path: the format, the windowing, per-format options.

    ``window`` and ``stride`` are in samples at the target rate: ``rate`` when given (every
    recording is resampled to it), else the format's own rate. Without ``window`` each format
    uses 2.56 s windows (UCI-HAR: its rows); without ``stride`` windows overlap by half
    (UCI-HAR: they do not, its rows already overlap). Options that a format does not read are
    refused by ``load_path`` rather than ignored.
    """

    #: one of FORMATS; None detects it from the layout
    format: str | None = None
    window: int | None = None
    stride: int | None = None
    #: target rate in Hz; None keeps the source rate
    rate: float | None = None
    #: rate of the rows (Hz) when the file does not say (labelled-csv: 50, esp32-csi: 100) and no time column is given
    source_rate: float | None = None
    #: labelled-csv, esp32-csi: the column holding the activity label
    label_column: str | None = None
    #: labelled-csv, motionsense: glob patterns of feature columns, as a comma list ('csi_*,rssi') or a tuple
    feature_columns: str | tuple[str, ...] | None = None
    #: labelled-csv, esp32-csi: 'col' (its values are the person) or 'col=domain,col2=domain2', or a mapping
    group_column: str | Mapping[str, str] | None = None
    #: labelled-csv, esp32-csi: a column of sample times; rows are then placed on a uniform grid by time
    time_column: str | None = None
    time_unit: Literal["s", "ms", "us", "ns"] = "s"
    #: pamap2: which IMU ('all' concatenates the three; 'each' makes one recording per IMU with its position)
    imu: Literal["all", "hand", "chest", "ankle", "each"] = "all"
    #: pamap2: sensor groups per IMU (temperature, acc16, acc6, gyro, mag, orientation); default acc16+gyro
    channels: str | tuple[str, ...] | None = None
    #: pamap2: runs of missing samples up to this long are interpolated; longer ones split the recording
    max_gap: int = 10
    #: esp32-csi: add the phase of every subcarrier after its amplitudes
    phase: bool = False

    def __post_init__(self):
        for name in ("window", "stride"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise FormatError(f"option {name} must be a whole number of samples, at least 1, got {value!r}")
        for name in ("rate", "source_rate"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, float)) or not value > 0 or math.isinf(value)):
                raise FormatError(f"option {name} must be a positive rate in Hz, got {value!r}")
        if self.time_unit not in TIME_UNITS:
            raise FormatError(f"option time_unit must be one of {', '.join(TIME_UNITS)}, got {self.time_unit!r}")
        if self.imu not in IMU_CHOICES:
            raise FormatError(f"option imu must be one of {', '.join(IMU_CHOICES)}, got {self.imu!r}")
        if not isinstance(self.max_gap, int) or self.max_gap < 0:
            raise FormatError(f"option max_gap must be a number of samples, 0 or more, got {self.max_gap!r}")
        self.feature_columns = _patterns(self.feature_columns, "feature_columns")
        self.channels = _patterns(self.channels, "channels")
        self.group_column = _group_mapping(self.group_column)

    @classmethod
    def parse(cls, text: str) -> LoadOptions:
        """Options from a spec, ``format:key=value,...`` (e.g. ``pamap2:imu=each,channels=acc16+gyro``)."""
        from crossedge.core.specs import bind, parse_spec

        spec = parse_spec(text, kind="format")
        kwargs = bind(spec, cls, kind="format", exclude=("format",))
        return cls(format=None if spec.name in ("auto", "detect") else spec.name, **kwargs)

    def changed(self) -> list[str]:
        """Names of the options that differ from their defaults."""
        default = LoadOptions()
        return [f.name for f in fields(self) if getattr(self, f.name) != getattr(default, f.name)]


def _patterns(value: Any, name: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = value.replace("+", ",").split(",") if isinstance(value, str) else list(value)
    items = [str(i).strip() for i in items if str(i).strip()]
    if not items:
        raise FormatError(f"option {name} is empty; give one or more names or patterns, like 'csi_*,rssi'")
    return tuple(items)


def _group_mapping(value: Any) -> dict[str, str] | None:
    """``'subject'`` -> {subject: person}; ``'subject=person,env=room'`` -> that mapping; a mapping is checked."""
    if value is None:
        return None
    if isinstance(value, str):
        mapping: dict[str, str] = {}
        for item in value.replace("+", ",").split(","):
            if not item.strip():
                continue
            column, _, domain = item.partition("=")
            mapping[column.strip()] = domain.strip() or "person"
        value = mapping
    value = {str(k): str(v) for k, v in dict(value).items()}
    if not value:
        raise FormatError("option group_column is empty; give a column name, or 'column=domain,...'")
    for column, domain in value.items():
        if domain not in SETTABLE_DOMAINS:
            raise FormatError(
                f"option group_column maps {column!r} to {domain!r}, which is not a domain column; "
                f"use one of {', '.join(SETTABLE_DOMAINS)}"
            )
    if len(set(value.values())) != len(value):
        raise FormatError(f"option group_column maps two columns to one domain: {value}; give each domain one column")
    return value


# ---------------------------------------------------------------- reading text


def open_text(path: Path, **kwargs: Any):
    """``path`` opened as UTF-8 text, with an error naming it when it cannot be."""
    try:
        return open(path, encoding="utf-8", **kwargs)
    except OSError as exc:
        problem = f"cannot be read ({exc.strerror or exc})"
        raise FormatError.at(path, None, problem, "check the path and permissions") from None


def text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its newline) for every line of ``path``."""
    with open_text(path, newline="") as handle:
        number = 0
        try:
            for number, line in enumerate(handle, 1):  # noqa: B007 (number is reported on a decode error)
                yield number, line.rstrip("\r\n")
        except UnicodeDecodeError:
            # decoding runs ahead in chunks, so the exact line is not known; the last good one is
            raise FormatError.at(
                path, None, f"is not UTF-8 text (after line {number})", "convert the file to UTF-8"
            ) from None


def head_lines(path: Path, count: int = 40) -> list[str]:
    """The first ``count`` lines of ``path`` (for format detection); [] when it is not readable text."""
    try:
        with open(path, encoding="utf-8", errors="replace", newline="") as handle:
            return [line.rstrip("\r\n") for _, line in zip(range(count), handle, strict=False)]
    except OSError:
        return []


def read_table(
    path: Path,
    *,
    delimiter: str | None = None,
    header: bool = False,
    columns: int | None = None,
    fix: str = "fix or delete the line",
) -> np.ndarray:
    """All numbers of a delimited text file as a (rows, columns) float64 array; blank lines are skipped.

    ``delimiter=None`` splits on runs of whitespace. ``header`` skips the first line.
    ``columns`` demands that many fields per row. A malformed file raises
    :class:`FormatError` naming the first bad line.
    """
    import warnings

    import numpy as np

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an empty file is reported below, as our error
            table = np.loadtxt(
                path,
                dtype=np.float64,
                delimiter=delimiter,
                skiprows=1 if header else 0,
                ndmin=2,
                comments=None,
                encoding="utf-8",
            )
    except OSError as exc:
        raise FormatError.at(path, None, f"cannot be read ({exc.strerror or exc})", "check the path") from None
    except (ValueError, UnicodeDecodeError) as exc:
        _raise_first_bad_line(path, delimiter=delimiter, header=header, columns=columns, fix=fix)
        # the rescan found no bad line; numpy's own message is the best we have
        raise FormatError.at(path, None, f"cannot be read as numbers ({exc})", fix) from None
    if table.size == 0:
        raise FormatError.at(path, None, "holds no data rows", "check that this is the right file")
    if columns is not None and table.shape[1] != columns:
        line = data_line(path, 0, header=header)
        raise FormatError.at(path, line, f"has {table.shape[1]} fields, expected {columns}", fix)
    return table


def _raise_first_bad_line(path: Path, *, delimiter: str | None, header: bool, columns: int | None, fix: str) -> None:
    expected = columns
    for number, line in text_lines(path):
        if header and number == 1:
            continue
        if not line.strip():
            continue
        parts = line.split(delimiter) if delimiter else line.split()
        if expected is None:
            expected = len(parts)
        if len(parts) != expected:
            raise FormatError.at(path, number, f"has {len(parts)} fields, expected {expected}", fix)
        for index, part in enumerate(parts, 1):
            try:
                float(part)
            except ValueError:
                raise FormatError.at(path, number, f"field {index} {part.strip()!r} is not a number", fix) from None


def data_line(path: Path, row: int, *, header: bool = False) -> int | None:
    """The line number of data row ``row`` (0-based, blank lines not counted) of ``path``."""
    seen = -1
    for number, line in text_lines(path):
        if (header and number == 1) or not line.strip():
            continue
        seen += 1
        if seen == row:
            return number
    return None


@dataclass
class CsvTable:
    """A CSV file with a header: column names, rows of text cells, and each row's line number."""

    path: Path
    header: list[str]
    rows: list[list[str]]
    lines: list[int]

    def index(self, column: str, *, option: str) -> int:
        """The position of ``column`` (exact name first, then case-insensitive); an error lists the columns."""
        if column in self.header:
            return self.header.index(column)
        lowered = [h.lower() for h in self.header]
        if column.lower() in lowered:
            return lowered.index(column.lower())
        raise FormatError.at(
            self.path, 1, f"has no column {column!r} (option {option})", f"its columns are: {', '.join(self.header)}"
        )

    def numbers(self, indices: Sequence[int], *, what: str = "value") -> np.ndarray:
        """The cells of ``indices`` as a (rows, len(indices)) float64 array; a bad cell names its line and column."""
        import numpy as np

        cells = [[row[i] for i in indices] for row in self.rows]
        try:
            table = np.array(cells, dtype=np.float64).reshape(len(cells), len(indices))
        except ValueError:
            table = None
        if table is not None and np.isfinite(table).all():
            return table
        for row, line in zip(self.rows, self.lines, strict=True):
            for i in indices:
                try:
                    value = float(row[i])
                except ValueError:
                    value = None
                if value is None or not math.isfinite(value):
                    problem = "is empty" if not row[i].strip() else f"{row[i].strip()!r} is not a finite number"
                    raise FormatError.at(
                        self.path,
                        line,
                        f"{what} in column {self.header[i]!r} {problem}",
                        "fill or delete the row, or leave the column out with --feature-columns",
                    )
        raise AssertionError("unreachable: a cell failed to convert but every cell converts")


def read_csv(path: Path) -> CsvTable:
    """A CSV file with a header line; every row must have the header's number of cells."""
    rows: list[list[str]] = []
    lines: list[int] = []
    with open_text(path, newline="") as handle:
        reader = csv.reader(handle)
        try:
            header = None
            for cells in reader:
                if not any(c.strip() for c in cells):
                    continue
                if header is None:
                    header = [c.strip() for c in cells]
                    continue
                if len(cells) != len(header):
                    raise FormatError.at(
                        path,
                        reader.line_num,
                        f"has {len(cells)} cells, the header has {len(header)}",
                        "fix or delete the row",
                    )
                rows.append(cells)
                lines.append(reader.line_num)
        except csv.Error as exc:
            raise FormatError.at(path, reader.line_num, f"is not valid CSV ({exc})", "fix the quoting") from None
        except UnicodeDecodeError:
            raise FormatError.at(
                path, None, f"is not UTF-8 text (after line {reader.line_num})", "convert it to UTF-8"
            ) from None
    if header is None:
        raise FormatError.at(path, None, "is empty", "a CSV needs a header line and data rows")
    if not rows:
        raise FormatError.at(path, None, "has a header but no data rows", "check that this is the right file")
    return CsvTable(path=path, header=header, rows=rows, lines=lines)


def match_columns(header: Sequence[str], patterns: Iterable[str], *, path: Path, option: str) -> list[int]:
    """Positions of the columns matched by glob ``patterns``, in pattern order then header order, no repeats."""
    chosen: list[int] = []
    # an unnamed column (a saved pandas index, say) is never a feature
    named = [(i, name) for i, name in enumerate(header) if name]
    for pattern in patterns:
        hits = [i for i, name in named if fnmatch.fnmatchcase(name, pattern)]
        if not hits:
            hits = [i for i, name in named if fnmatch.fnmatchcase(name.lower(), pattern.lower())]
        if not hits:
            raise FormatError.at(
                path, 1, f"no column matches {pattern!r} (option {option})", f"its columns are: {', '.join(header)}"
            )
        chosen.extend(i for i in hits if i not in chosen)
    return chosen


# ---------------------------------------------------------------- folders as domains

_FOLDER_DOMAIN = re.compile(
    r"^(?P<key>person|people|user|subject|sub|room|environment|env|position|device|session|day)"
    r"(?:[_\- ]+(?P<value>.+)|(?P<digits>\d.*))$",
    re.IGNORECASE,
)
_FOLDER_KEYS = {
    "person": "person",
    "people": "person",
    "user": "person",
    "subject": "person",
    "sub": "person",
    "room": "room",
    "environment": "room",
    "env": "room",
    "position": "position",
    "device": "device",
    "session": "session",
    "day": "session",
}


def folder_parts(root: Path, file: Path) -> tuple[dict[str, str], str | None]:
    """(domains, label folder) read from the folders between ``root`` and ``file``.

    A folder named like ``person_3``, ``user3``, ``room-a``, ``day2`` sets that domain; the
    nearest other folder is the label folder. A file given directly has neither.
    """
    if root == file or root not in file.parents:
        return {}, None
    domains: dict[str, str] = {}
    label = None
    for part in file.relative_to(root).parts[:-1]:
        found = _FOLDER_DOMAIN.match(part)
        if found:
            domains[_FOLDER_KEYS[found["key"].lower()]] = found["value"] or found["digits"]
        else:
            label = part
    return domains, label


def files_under(path: Path, suffixes: Sequence[str]) -> list[Path]:
    """``path`` itself when it is a file, else every file below it with one of ``suffixes``, sorted."""
    if path.is_file():
        return [path]
    found = [p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith(".")]
    return sorted(found)


# ---------------------------------------------------------------- runs, time, windows


def runs(keys: Sequence[Any]) -> list[tuple[int, int]]:
    """(start, stop) of every maximal stretch of equal consecutive ``keys``."""
    spans = []
    start = 0
    for i in range(1, len(keys) + 1):
        if i == len(keys) or keys[i] != keys[start]:
            spans.append((start, i))
            start = i
    return spans


def code_runs(codes: np.ndarray) -> list[tuple[int, int]]:
    """:func:`runs` for an integer array (or a 2-D array whose rows are the keys), vectorized."""
    import numpy as np

    codes = np.asarray(codes)
    if not len(codes):
        return []
    change = codes[1:] != codes[:-1]
    if change.ndim > 1:
        change = change.any(axis=1)
    edges = np.concatenate([[0], np.flatnonzero(change) + 1, [len(codes)]])
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def regrid(
    signal: np.ndarray, times: np.ndarray, rate: float | None, *, path: Path, lines: Sequence[int]
) -> tuple[np.ndarray, float]:
    """``signal`` (T, C) sampled at ``times`` (seconds) placed on a uniform grid at ``rate`` (default: the median rate).

    Times must increase strictly; the error names the first line where they do not.
    """
    import numpy as np

    steps = np.diff(times)
    bad = np.flatnonzero(~(steps > 0))
    if len(bad):
        i = int(bad[0]) + 1
        raise FormatError.at(
            path,
            lines[i],
            f"time {times[i]:g} s does not come after {times[i - 1]:g} s (line {lines[i - 1]})",
            "sort the rows by time, or drop --time-column to take the rows as evenly sampled",
        )
    if len(times) < 2:
        return np.asarray(signal, dtype=np.float64), float(rate or 1.0)
    if rate is None:
        rate = float(1.0 / np.median(steps))
    count = int(np.floor((times[-1] - times[0]) * rate + 1e-9)) + 1
    grid = times[0] + np.arange(count) / rate
    out = np.stack([np.interp(grid, times, signal[:, c]) for c in range(signal.shape[1])], axis=1)
    return out, float(rate)


def regrid_all(
    pieces: Sequence[tuple[Recording, np.ndarray | None, Sequence[int], Path]], rate: float | None
) -> tuple[list[Recording], float | None]:
    """Recordings with sample times (seconds) placed on one uniform grid; (recordings, that grid's rate).

    ``pieces`` are (recording, times or None, line numbers, file). The grid's rate is
    ``rate``, else the median rate over every timed piece, so all of them agree; recordings
    without times are returned as they are. The rate is None when no piece has times.
    """
    import numpy as np

    timed = [times for _, times, _, _ in pieces if times is not None and len(times) > 1]
    if rate is None and timed:
        steps = np.concatenate([np.diff(t) for t in timed])
        positive = steps[steps > 0]
        rate = float(1.0 / np.median(positive)) if len(positive) else None
    if not timed:
        return [r for r, _, _, _ in pieces], None
    out = []
    for recording, times, lines, path in pieces:
        if times is not None:
            signal, grid_rate = regrid(recording.signal, times, rate, path=path, lines=lines)
            recording = Recording(
                signal=signal, label=recording.label, rate=grid_rate, domains=recording.domains, source=recording.source
            )
        out.append(recording)
    return out, rate


def natural(text: str) -> tuple:
    """Sort key that puts ``2`` before ``10`` (and ``p2`` before ``p10``)."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text))


def label_order(present: Iterable[str], canonical: Sequence[str] = ()) -> tuple[str, ...]:
    """The labels that occur: in ``canonical`` order for those it lists, then the rest in natural order."""
    present = set(present)
    known = [name for name in canonical if name in present]
    return tuple(known + sorted(present - set(known), key=natural))


def domain_mapping(header: Sequence[str], explicit: Mapping[str, str] | None, *, skip: Iterable[int]) -> dict[str, str]:
    """Column -> domain: the ``group_column`` mapping, plus columns named after a domain it does not claim."""
    mapping = dict(explicit or {})
    claimed = set(mapping.values()) | {c.lower() for c in mapping}
    skipped = set(skip)
    for i, name in enumerate(header):
        domain = DOMAIN_ALIASES.get(name.lower())
        if domain and i not in skipped and domain not in claimed and name.lower() not in claimed:
            mapping[name] = domain
            claimed |= {domain, name.lower()}
    return mapping


def default_windowing(
    options: LoadOptions, rate: float, *, seconds: float = 2.56, overlap: float = 0.5, length: int | None = None
) -> Windowing:
    """The user's window, stride and rate over the format's defaults (``seconds`` long windows at the target rate)."""
    target = options.rate or rate
    window = options.window or length or max(1, round(seconds * target))
    stride = options.stride or max(1, round(window * (1.0 - overlap)))
    return Windowing(length=window, stride=stride, rate=options.rate)


def window_count(recording: Recording, windowing: Windowing) -> int:
    """How many windows :func:`~crossedge.sensing.windows.windows_from_recordings` cuts from ``recording``."""
    count = len(recording.signal)
    # the same length rule as windows.resample, so the count matches the windows exactly
    if windowing.rate is not None and recording.rate != windowing.rate and count >= 2:
        count = int(math.floor((count - 1) / recording.rate * windowing.rate + 1e-9)) + 1
    if count < windowing.length:
        return 0
    return (count - windowing.length) // windowing.step + 1


def window_recordings(
    recordings: Sequence[Recording], windowing: Windowing, *, label_names: Sequence[str], dataset: str
) -> tuple[ArrayData, np.ndarray]:
    """:func:`windows_from_recordings`, plus the index of the recording each window came from."""
    import numpy as np

    data = windows_from_recordings(recordings, windowing, label_names=label_names, dataset=dataset)
    counts = [window_count(r, windowing) for r in recordings]
    origin = np.repeat(np.arange(len(recordings), dtype=np.int64), counts)
    if len(origin) != len(data.x):  # a change in windows.py's rules must not silently misplace splits
        raise ArrayDatasetError(f"{dataset}: counted {len(origin)} windows but {len(data.x)} were cut")
    return data, origin


def describe(data: ArrayData, *, format: str, path: Path, windowing: Windowing, rate: float, channels: Sequence[str]):
    """Record how the arrays were made in ``data.manifest`` (the cache replaces it with its own manifest)."""
    data.manifest = {
        "format": format,
        "path": str(path),
        "rate": windowing.rate or rate,
        "window": windowing.length,
        "stride": windowing.step,
        "channels": list(channels),
    }
    return data
