"""ESP32 channel state information: esp-csi ``CSI_DATA`` logs and WiGesture/WiFall-style CSV files.

Two layouts share one parser, since both carry each packet's CSI as one bracketed list of
interleaved ``[imaginary0, real0, imaginary1, real1, ...]`` integers (comma- or space-separated,
quoted or not):

- esp-csi logs: rows ``CSI_DATA,id,mac,rssi,rate,...,len,first_word,data``, with or without
  their ``type,id,mac,...`` header line; other lines (console output) are skipped.
- CSV files with a header that has a ``data`` column, and maybe label, person or room columns.

Every packet becomes one sample of amplitude per subcarrier (then phase per subcarrier with
``phase=True``). The label comes from ``label_column``, else a column named label, activity,
gesture, action or class, else the folder the file is in (``wave/run1.csv``). Columns named
after a domain (person, room, ..., or user/subject for person) set it, as do folders like
``person_3`` or ``room-a``; ``group_column`` maps other columns. A recording is a contiguous
run of one label and one set of domain values in one file. Rows are taken as evenly sampled
at ``source_rate`` (default 100 Hz) unless ``time_column`` gives packet times (for esp-csi,
``time_column=local_timestamp, time_unit=us``).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
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
    head_lines,
    label_order,
    regrid_all,
    runs,
    text_lines,
    window_recordings,
)

NAME = "esp32-csi"
LAYOUT = "esp-csi CSI_DATA logs, or CSV files with a 'data' column of [imag,real,...] lists (a file or a folder)"
RATE = 100.0
#: the columns of an esp-csi log, for logs saved without their header line
ESP_CSI_COLUMNS = (
    *("type", "id", "mac", "rssi", "rate", "sig_mode", "mcs", "bandwidth", "smoothing", "not_sounding"),
    *("aggregation", "stbc", "fec_coding", "sgi", "noise_floor", "ampdu_cnt", "channel", "secondary_channel"),
    *("local_timestamp", "ant", "sig_len", "rx_state", "len", "first_word", "data"),
)
OPTIONS = frozenset({"label_column", "group_column", "time_column", "time_unit", "source_rate", "phase"})
SUFFIXES = (".csv", ".txt", ".log")
_SPLIT = re.compile(r"[\s,]+")
_FIX = "fix or delete the line"


def _cells(text: str) -> list[str]:
    return [c.strip() for c in next(csv.reader([text]))] if text else []


def _is_header(text: str) -> bool:
    return "[" not in text and "data" in [c.lower() for c in _cells(text)]


def sniff(file: Path) -> bool:
    """Whether the head of ``file`` holds CSI_DATA rows, or a header with a ``data`` column then a bracketed list."""
    lines = [line.strip() for line in head_lines(file) if line.strip()]
    if any(line.startswith("CSI_DATA") for line in lines):
        return True
    return len(lines) > 1 and _is_header(lines[0]) and "[" in lines[1]


def candidates(path: Path) -> list[Path]:
    """The files to read: ``path`` itself, or every CSV under it and every .txt/.log that holds CSI."""
    if path.is_file():
        return [path]
    return [f for f in files_under(path, SUFFIXES) if f.suffix.lower() == ".csv" or sniff(f)]


def matches(path: Path) -> bool:
    """Whether ``path`` is an ESP32 CSI file, or a folder whose first candidate file is one."""
    if path.is_file():
        return path.suffix.lower() in SUFFIXES and sniff(path)
    if not path.is_dir():
        return False
    found = files_under(path, (".csv",)) or [f for f in files_under(path, SUFFIXES) if sniff(f)]
    return bool(found) and sniff(found[0])


@dataclass
class Packets:
    """The CSI rows of one file: values (rows, 2K) int, the other cells by column, and line numbers."""

    path: Path
    header: list[str] | None
    values: object
    cells: list[list[str]]
    lines: list[int]

    def column(self, name: str, *, option: str) -> int:
        """The position of a named column; an error lists the columns (or says the file has no header)."""
        if self.header is None:
            raise FormatError.at(
                self.path,
                None,
                f"has no header line, so it has no column {name!r} (option {option})",
                "add the header line, or drop the option",
            )
        lowered = [h.lower() for h in self.header]
        if name.lower() not in lowered:
            raise FormatError.at(
                self.path, 1, f"has no column {name!r} (option {option})", f"its columns are: {', '.join(self.header)}"
            )
        return lowered.index(name.lower())


def _split_row(path: Path, number: int, text: str) -> tuple[list[str], str, list[str]]:
    """(cells before the list, the list's text, cells after it) of one row."""
    start, stop = text.find("["), text.rfind("]")
    if start < 0:
        raise FormatError.at(path, number, "has no [imag,real,...] CSI list", _FIX)
    if stop < start:
        raise FormatError.at(path, number, "its CSI list is not closed with ']' (a cut-off line?)", _FIX)
    before = text[:start].rstrip()
    before = before[:-1].rstrip() if before.endswith('"') else before
    if before and not before.endswith(","):
        raise FormatError.at(path, number, "the CSI list does not start a new field", _FIX)
    after = text[stop + 1 :].strip()
    after = after[1:].strip() if after.startswith('"') else after
    if after and not after.startswith(","):
        raise FormatError.at(path, number, f"{after[:20]!r} follows the CSI list in the same field", _FIX)
    return _cells(before[:-1]) if before else [], text[start + 1 : stop], _cells(after[1:]) if after else []


def _values(path: Path, number: int, text: str):
    import numpy as np

    tokens = [t for t in _SPLIT.split(text.strip()) if t]
    if not tokens:
        raise FormatError.at(path, number, "its CSI list is empty", _FIX)
    try:
        values = np.array(tokens, dtype=np.int64)
    except ValueError:
        bad = next(t for t in tokens if not re.fullmatch(r"[+-]?\d+", t))
        raise FormatError.at(path, number, f"CSI value {bad!r} is not an integer", _FIX) from None
    if len(values) % 2:
        raise FormatError.at(
            path, number, f"its CSI list has {len(values)} values, an odd count", "it must hold imaginary,real pairs"
        )
    return values


def read_packets(path: Path) -> Packets:
    """Every CSI row of one file, with the header when it has one."""
    import numpy as np

    header: list[str] | None = None
    log = None  # True: a CSI_DATA log (other lines skipped); False: a table (every line is a row)
    values, cells, lines = [], [], []
    first_line = None
    shapes = set()  # (fields before the list, fields after it) of every row
    for number, line in text_lines(path):
        text = line.strip()
        if not text:
            continue
        if not values and _is_header(text):
            # the header line, maybe after console output; a repeat of it before any packet is skipped
            header = header or _cells(text)
            log = header[0].lower() == "type" if log is None else log
            continue
        if log is None:
            log = True  # no header: an esp-csi log, perhaps with console output first
        if log and not text.startswith("CSI_DATA"):
            continue  # console output and repeated header lines between packets
        before, listed, after = _split_row(path, number, text)
        if header is not None:
            at = header.index(next(h for h in header if h.lower() == "data"))
            if len(before) != at or len(before) + 1 + len(after) != len(header):
                raise FormatError.at(
                    path,
                    number,
                    f"has {len(before) + 1 + len(after)} fields with the list at field {len(before) + 1}, the "
                    f"header has {len(header)} with data at field {at + 1}",
                    _FIX,
                )
        row = _values(path, number, listed)
        if values and len(row) != len(values[0]):
            raise FormatError.at(
                path,
                number,
                f"its CSI list has {len(row)} values, line {first_line}'s has {len(values[0])}",
                "one file must hold one CSI layout; split the file by CSI length",
            )
        first_line = first_line or number
        shapes.add((len(before), len(after)))
        values.append(row)
        cells.append([*before, "", *after])
        lines.append(number)
    if not values:
        raise FormatError.at(
            path, None, "holds no CSI rows", "expected CSI_DATA rows, or a header with a data column and rows below"
        )
    if header is None and shapes == {(len(ESP_CSI_COLUMNS) - 1, 0)}:
        header = list(ESP_CSI_COLUMNS)  # a log saved without its header line still has esp-csi's columns
    return Packets(path=path, header=header, values=np.stack(values), cells=cells, lines=lines)


def features(values, phase: bool):
    """Amplitude of every subcarrier from interleaved (imaginary, real) pairs, then its phase when asked."""
    import numpy as np

    imaginary = values[:, 0::2].astype(np.float64)
    real = values[:, 1::2].astype(np.float64)
    parts = [np.hypot(imaginary, real)]
    if phase:
        parts.append(np.arctan2(imaginary, real))
    return np.concatenate(parts, axis=1)


def _labels_and_domains(packets: Packets, root: Path, options: LoadOptions) -> tuple[list[str], dict[str, list[str]]]:
    """The label of every row and each domain's values per row (columns over folders)."""
    count = len(packets.lines)
    folder_domains, folder_label = folder_parts(root, packets.path)
    header = [h.lower() for h in packets.header or []]
    if options.label_column:
        label_at = packets.column(options.label_column, option="label_column")
    else:
        label_at = next((header.index(c) for c in LABEL_COLUMNS if c in header), None)
    if label_at is not None:
        labels = [row[label_at].strip() for row in packets.cells]
        empty = next((i for i, label in enumerate(labels) if not label), None)
        if empty is not None:
            raise FormatError.at(
                packets.path, packets.lines[empty], f"the label in column {packets.header[label_at]!r} is empty", _FIX
            )
    elif folder_label is not None:
        labels = [folder_label] * count
    else:
        raise FormatError.at(
            packets.path,
            None,
            "has no label",
            "name a label column with --label-column, or load a folder with one subfolder per activity",
        )
    domains = {d: [v] * count for d, v in folder_domains.items()}
    skip = [] if label_at is None else [label_at]
    for column, domain in domain_mapping(packets.header or [], options.group_column, skip=skip).items():
        at = packets.column(column, option="group_column")
        domains[domain] = [row[at].strip() or "unknown" for row in packets.cells]
    return labels, domains


def _times(packets: Packets, options: LoadOptions):
    import numpy as np

    at = packets.column(options.time_column, option="time_column")
    out = np.empty(len(packets.cells))
    for i, row in enumerate(packets.cells):
        try:
            out[i] = float(row[at])
        except ValueError:
            raise FormatError.at(
                packets.path,
                packets.lines[i],
                f"time {row[at]!r} is not a number",
                "fix the row, or drop --time-column",
            ) from None
    return out * TIME_UNITS[options.time_unit]


def windowing(options: LoadOptions, rate: float | None = None) -> Windowing:
    """2.56 s windows at the target rate (256 packets at 100 Hz) overlapping by half, unless options say otherwise."""
    return default_windowing(options, rate or options.source_rate or RATE)


def load(path: Path, options: LoadOptions) -> ArrayData:
    """The windows of one CSI file or of every CSI file under a folder."""
    files = candidates(path)
    if not files:
        raise FormatError.at(path, None, "holds no CSI files", f"expected {LAYOUT}")
    root = path if path.is_dir() else path.parent
    pieces, width, first = [], None, None
    for file in files:
        packets = read_packets(file)
        signal = features(packets.values, options.phase)
        if width is None:
            width, first = signal.shape[1], file
        elif signal.shape[1] != width:
            raise FormatError.at(
                file,
                packets.lines[0],
                f"gives {signal.shape[1]} channels, {first} gives {width}",
                "load files with one CSI layout together",
            )
        labels, domains = _labels_and_domains(packets, root if path.is_dir() else path, options)
        times = _times(packets, options) if options.time_column else None
        keys = list(zip(labels, *domains.values(), strict=True))
        for a, b in runs(keys):
            recording = Recording(
                signal=signal[a:b],
                label=labels[a],
                rate=options.source_rate or RATE,
                domains={d: v[a] for d, v in domains.items()},
                source=f"{file}:{packets.lines[a]}",
            )
            pieces.append((recording, None if times is None else times[a:b], packets.lines[a:b], file))
    recordings, timed_rate = regrid_all(pieces, options.rate)
    rate = timed_rate or options.source_rate or RATE
    cut = windowing(options, rate)
    labels = label_order({r.label for r in recordings})
    data, _ = window_recordings(recordings, cut, label_names=labels, dataset=NAME)
    subcarriers = width // 2 if options.phase else width
    channels = [f"amplitude_{k}" for k in range(subcarriers)]
    channels += [f"phase_{k}" for k in range(subcarriers)] if options.phase else []
    return describe(data, format=NAME, path=path, windowing=cut, rate=rate, channels=channels)
