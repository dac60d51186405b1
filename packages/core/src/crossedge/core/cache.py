"""The on-disk cache: location, atomic writes, file locks and integrity manifests."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import tempfile
import threading
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
#: Staging folders older than this whose entry is not locked are left over from a killed build.
STALE_STAGING_S = 60 * 60
_CHUNK = 1 << 20
# mkdtemp names: ".NAME.<8 random>.partial"; replaced entries: ".NAME.old-<pid>-<ns>".
_STAGING = re.compile(r"^\.(?P<name>.+)\.(?:[a-z0-9_]{8}\.partial|old-\d+-\d+)$")


def cache_dir() -> Path:
    """Root of crossedge's cache: ``$CROSSEDGE_CACHE``, else ``$XDG_CACHE_HOME/crossedge``.

    Raises :class:`ModelSourceError` when the path (or a folder above it) is a file.
    """
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        root = Path(explicit).expanduser()
        origin = f"{CACHE_ENV}={explicit}"
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        root = Path(base) / "crossedge"
        origin = f"the cache folder {root}"
    for candidate in (root, *root.parents):
        if candidate.exists():
            if not candidate.is_dir():
                raise ModelSourceError(
                    f"{origin} cannot be used: {candidate} is a file, not a folder. "
                    f"Point {CACHE_ENV} at a folder (it is created if missing)."
                )
            break
    return root


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def is_staging(name: str) -> bool:
    """True for the name of a staging folder or temporary file (not part of any cache entry)."""
    return _STAGING.match(name) is not None or (name.startswith(".") and name.endswith(".partial"))


def dir_size(path: Path) -> int:
    """Bytes of all regular files below ``path`` (0 when it does not exist), staging folders excluded."""
    if not path.exists():
        return 0
    total = 0
    for p in path.rglob("*"):
        if any(is_staging(part) for part in p.relative_to(path).parts):
            continue
        if p.is_file() and not p.is_symlink():
            total += p.stat().st_size
    return total


def staging_leftovers(parent: Path, name: str | None = None) -> list[Path]:
    """Staging folders and replaced entries below ``parent`` (those of entry ``name`` only, if given)."""
    if not parent.is_dir():
        return []
    found = []
    for child in parent.iterdir():
        match = _STAGING.match(child.name)
        if match is not None and (name is None or match["name"] == name):
            found.append(child)
    return sorted(found)


def _lock_is_free(target: Path) -> bool:
    if str(target) in _held_locks():
        return True  # we hold it: no build of that entry can be running anywhere else
    lock = FileLock(str(target) + ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return False
    lock.release()
    return True


def sweep_staging(parent: Path, *, older_than_s: float = STALE_STAGING_S) -> list[Path]:
    """Delete staging folders a killed build left below ``parent``; returns what was removed.

    Only folders whose entry's lock is free are touched, so a build running in another
    process keeps its staging folder; those of an entry the current thread holds the lock
    of are removed whatever their age (every build runs under that lock, so none is live),
    the others once older than ``older_than_s``.
    """
    removed = []
    now = time.time()
    for path in staging_leftovers(parent):
        try:
            age = now - path.stat().st_mtime
        except OSError:
            continue
        name = _STAGING.match(path.name)["name"]  # type: ignore[index]
        ours = str(parent / name) in _held_locks()
        if (age < older_than_s and not ours) or not _lock_is_free(parent / name):
            continue
        _remove(path)
        removed.append(path)
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def _terminate_as_exit() -> Iterator[None]:
    """Turn SIGTERM into ``SystemExit(143)`` for the block, so ``finally`` clauses clean up.

    Python's default SIGTERM action kills the process without unwinding, which left
    staging folders of hundreds of MB behind. Only the main thread can set handlers.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except (ValueError, OSError):  # pragma: no cover - no signals on this platform or thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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
    held = _held_locks()
    held.add(str(path))
    try:
        yield
    finally:
        held.discard(str(path))
        lock.release()


_held = threading.local()


def _held_locks() -> set[str]:
    """Entries whose lock the current thread holds through :func:`locked`."""
    if not hasattr(_held, "paths"):
        _held.paths = set()
    return _held.paths


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
    sweep_staging(dest.parent)
    with _terminate_as_exit():
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


def file_stamp(stat: os.stat_result) -> list[int]:
    """What the cheap check compares: size, modification and change time, inode.

    The change time matters: a file rewritten and given back its old mtime (``touch -d``,
    ``os.utime``, a restore tool) still gets a new ctime, which no user call can set, so
    the next load hashes it again instead of trusting damaged weights.
    """
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]


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
        stamps[rel] = file_stamp(stat)
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
        raise CacheCorruptedError(
            f"{path} is unreadable ({exc}): the cache entry is damaged; "
            f"run 'crossedge models pull {folder.name} --force' to fetch it again"
        ) from exc
    if not isinstance(manifest, dict):
        raise CacheCorruptedError(
            f"{path} is not a JSON object; run 'crossedge models pull {folder.name} --force' to fetch it again"
        )
    if manifest.get("manifest_version") != MANIFEST_VERSION or not isinstance(manifest.get("files"), dict):
        raise CacheCorruptedError(
            f"{path} has manifest version {manifest.get('manifest_version')!r}; this crossedge reads "
            f"version {MANIFEST_VERSION}. Pull the model again with --force."
        )
    return manifest


def verify_folder(folder: Path, *, full: bool = False) -> dict[str, Any]:
    """Check every file against the manifest and return the manifest.

    Sizes are always checked. Hashes are recomputed only for files whose size,
    modification or change time or inode changed since the last hash (like git's
    index), or for every file when ``full`` is true. A failed check deletes the stamp
    file, so no later load trusts the entry without hashing it again. Raises
    :class:`CacheCorruptedError` naming ``crossedge models pull NAME --force``.
    """
    manifest = read_manifest(folder)
    stamp_path = folder / STAMP_NAME
    try:
        stamps = json.loads(stamp_path.read_text())
        if not isinstance(stamps, dict):
            stamps = {}
    except (OSError, ValueError):
        stamps = {}
    name = manifest.get("source") or folder.name
    fix = f"run 'crossedge models pull {name} --force' to fetch it again"
    changed = False
    try:
        for rel, expected in manifest["files"].items():
            path = folder / rel
            try:
                stat = path.stat()
            except FileNotFoundError as exc:
                raise CacheCorruptedError(f"{path} is missing from the cache entry; {fix}") from exc
            if stat.st_size != expected["size"]:
                raise CacheCorruptedError(
                    f"{path} is {stat.st_size} bytes, the manifest says {expected['size']}: "
                    f"truncated or replaced; {fix}"
                )
            if not full and stamps.get(rel) == file_stamp(stat):
                continue
            if sha256_file(path) != expected["sha256"]:
                raise CacheCorruptedError(f"{path} does not match its recorded SHA-256: the file is damaged; {fix}")
            stamps[rel] = file_stamp(stat)
            changed = True
    except CacheCorruptedError:
        # Forget every stamp: the entry is suspect, and a stamp left behind would let
        # the next load skip the hash of a file that still matches its old size and times.
        stamp_path.unlink(missing_ok=True)
        raise
    except (KeyError, TypeError) as exc:
        stamp_path.unlink(missing_ok=True)
        problem = f"{type(exc).__name__}: {exc}"
        raise CacheCorruptedError(f"{folder / MANIFEST_NAME} is malformed ({problem}); {fix}") from exc
    if changed:
        with contextlib.suppress(OSError):
            stamp_path.write_text(json.dumps(stamps))
    return manifest
