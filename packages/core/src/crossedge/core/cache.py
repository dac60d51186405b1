"""The on-disk cache: location, atomic writes, file locks and integrity manifests."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from filelock import FileLock, Timeout

from .errors import CacheCorruptedError, ChecksumMismatchError, ModelSourceError

CACHE_ENV = "CROSSEDGE_CACHE"
MANIFEST_NAME = "crossedge-manifest.json"
STAMP_NAME = ".crossedge-verified.json"
MANIFEST_VERSION = 1
LOCK_TIMEOUT_S = 30 * 60
_CHUNK = 1 << 20


def cache_dir() -> Path:
    """Root of crossedge's cache: ``$CROSSEDGE_CACHE``, else ``$XDG_CACHE_HOME/crossedge``."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "crossedge"


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def dir_size(path: Path) -> int:
    """Bytes of all regular files below ``path`` (0 when it does not exist)."""
    if not path.exists():
        return 0
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


@contextlib.contextmanager
def locked(path: Path, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold an exclusive lock file beside ``path`` so two processes never write it at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path) + ".lock")
    try:
        lock.acquire(timeout=timeout)
    except Timeout as exc:
        raise ModelSourceError(
            f"another crossedge process has held the lock on {path} for {timeout:.0f} s; "
            f"wait for it to finish, or delete {path}.lock if no such process is running"
        ) from exc
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def atomic_file(dest: Path) -> Iterator[BinaryIO]:
    """Open a temporary file beside ``dest``; it replaces ``dest`` only if the block succeeds."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def staging_dir(dest: Path) -> Iterator[Path]:
    """A temporary folder beside ``dest`` that replaces it only if the block succeeds.

    An interrupted or failed build leaves ``dest`` exactly as it was.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    try:
        yield tmp
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}-{time.monotonic_ns()}")
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def verify_sha256(path: Path, expected: str, what: str) -> None:
    """Raise :class:`ChecksumMismatchError` (and delete nothing) if the file's hash differs."""
    actual = sha256_file(path)
    if actual != expected:
        raise ChecksumMismatchError(
            f"{what} at {path} has SHA-256 {actual}, expected {expected}: the download is damaged "
            f"or the file was replaced. Delete it and pull again."
        )


def write_manifest(folder: Path, *, source: str, origin: dict[str, Any]) -> dict[str, Any]:
    """Record size and SHA-256 of every file in ``folder``; returns the manifest."""
    files = {}
    stamps = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel in (MANIFEST_NAME, STAMP_NAME):
            continue
        stat = path.stat()
        files[rel] = {"size": stat.st_size, "sha256": sha256_file(path)}
        stamps[rel] = [stat.st_size, stat.st_mtime_ns]
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "source": source,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "origin": origin,
        "files": files,
    }
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    (folder / STAMP_NAME).write_text(json.dumps(stamps))
    return manifest


def read_manifest(folder: Path) -> dict[str, Any]:
    """Load a folder's manifest, raising :class:`CacheCorruptedError` if it is missing or unreadable."""
    path = folder / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise CacheCorruptedError(f"{folder} has no {MANIFEST_NAME}: it was never completed") from exc
    except (OSError, ValueError) as exc:
        raise CacheCorruptedError(f"{path} is unreadable: {exc}") from exc
    if manifest.get("manifest_version") != MANIFEST_VERSION or not isinstance(manifest.get("files"), dict):
        raise CacheCorruptedError(
            f"{path} has manifest version {manifest.get('manifest_version')!r}; this crossedge reads "
            f"version {MANIFEST_VERSION}. Pull the model again with --force."
        )
    return manifest


def verify_folder(folder: Path, *, full: bool = False) -> dict[str, Any]:
    """Check every file against the manifest and return the manifest.

    Sizes are always checked. Hashes are recomputed only for files whose size or
    modification time changed since the last full check (like git's index), or for
    every file when ``full`` is true. Raises :class:`CacheCorruptedError`.
    """
    manifest = read_manifest(folder)
    stamp_path = folder / STAMP_NAME
    try:
        stamps = json.loads(stamp_path.read_text())
    except (OSError, ValueError):
        stamps = {}
    changed = False
    for rel, expected in manifest["files"].items():
        path = folder / rel
        try:
            stat = path.stat()
        except FileNotFoundError as exc:
            raise CacheCorruptedError(f"{path} is missing from the cache entry") from exc
        if stat.st_size != expected["size"]:
            raise CacheCorruptedError(
                f"{path} is {stat.st_size} bytes, the manifest says {expected['size']}: truncated or replaced"
            )
        if not full and stamps.get(rel) == [stat.st_size, stat.st_mtime_ns]:
            continue
        if sha256_file(path) != expected["sha256"]:
            raise CacheCorruptedError(f"{path} does not match its recorded SHA-256: the file is damaged")
        stamps[rel] = [stat.st_size, stat.st_mtime_ns]
        changed = True
    if changed:
        with contextlib.suppress(OSError):
            stamp_path.write_text(json.dumps(stamps))
    return manifest
