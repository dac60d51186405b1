"""Loaders for the recording formats users have on disk: a path in, windows (:class:`ArrayData`) out.

Each module reads one format into :class:`~crossedge.sensing.windows.Recording` objects (one
continuous signal and one label each; labelled streams are cut into contiguous same-label
runs) and windows them with :func:`~crossedge.sensing.windows.windows_from_recordings`, so
every format ends in the same (N, T, C) windows and the same domain table. A module has
``NAME``, ``LAYOUT`` (what it expects, for error messages), ``RATE`` (its own sampling
rate), ``OPTIONS`` (the :class:`LoadOptions` fields it reads beyond the windowing),
``matches(path)`` and ``load(path, options)``.

    data = load_path("~/data/UCI HAR Dataset")
    data = load_path("capture.csv", LoadOptions(label_column="gesture", feature_columns="csi_*", rate=50))
    data = load_path("PAMAP2_Dataset", LoadOptions.parse("pamap2:imu=each,window=200"))
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from crossedge.core.contracts.array_dataset import ArrayData

from . import esp32_csi, labelled_csv, motionsense, pamap2, uci_har, wisdm
from .common import FormatError, FormatWarning, LoadOptions

#: format name -> its module, in the order :func:`detect_format` tries them (the most specific layout first)
FORMATS: dict[str, ModuleType] = {
    module.NAME: module for module in (uci_har, pamap2, motionsense, wisdm, esp32_csi, labelled_csv)
}
#: the options every format reads
WINDOW_OPTIONS = ("format", "window", "stride", "rate")

__all__ = ["FORMATS", "FormatError", "FormatWarning", "LoadOptions", "detect_format", "format_module", "load_path"]


def _layouts() -> str:
    return "; ".join(f"{name}: {module.LAYOUT}" for name, module in FORMATS.items())


def format_module(name: str) -> ModuleType:
    """The module of a format given by name (``uci_har`` and ``UCI-HAR`` work too)."""
    key = name.strip().lower().replace("_", "-")
    if key not in FORMATS:
        raise FormatError(f"unknown format {name!r}; the formats are: {', '.join(FORMATS)}")
    return FORMATS[key]


def detect_format(path: str | Path) -> str:
    """The name of the format ``path`` (a file or a folder) is in, judged by its layout and first lines."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FormatError.at(path, None, "does not exist", "check the path")
    if path.is_file() and path.suffix.lower() in (".zip", ".gz", ".tgz", ".tar", ".7z"):
        raise FormatError.at(path, None, "is an archive", "unpack it and give the folder it unpacks to")
    for name, module in FORMATS.items():
        if module.matches(path):
            return name
    raise FormatError.at(
        path, None, "matches no known format", f"give --format, or arrange it as one of these: {_layouts()}"
    )


def check_options(name: str, options: LoadOptions) -> None:
    """Refuse options that the format ``name`` would not read, rather than ignore them."""
    module = format_module(name)
    stray = [o for o in options.changed() if o not in WINDOW_OPTIONS and o not in module.OPTIONS]
    if stray:
        users = [n for n, m in FORMATS.items() if stray[0] in m.OPTIONS]
        raise FormatError(
            f"option {stray[0]} does not apply to the {name} format (it applies to {', '.join(users)}); drop it"
        )


def load_path(path: str | Path, options: LoadOptions | None = None) -> ArrayData:
    """The windows of the recordings at ``path``, in ``options.format`` or the detected format.

    The result's ``manifest`` says the format, rate, window, stride and channel names; UCI-HAR
    keeps its train/test splits. Every problem with the files is a :class:`FormatError`
    naming the file and line.
    """
    options = options or LoadOptions()
    path = Path(path).expanduser()
    if not path.exists():
        raise FormatError.at(path, None, "does not exist", "check the path")
    name = format_module(options.format).NAME if options.format else detect_format(path)
    check_options(name, options)
    return FORMATS[name].load(path, options)
