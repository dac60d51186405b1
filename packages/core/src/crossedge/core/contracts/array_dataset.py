"""The array-dataset contract: windows ``x`` (N, T, C) with labels, a domain table and named splits.

A plugin subclasses :class:`ArrayDataset`, sets ``name``, ``version``, ``recipe_version`` and
``label_names``, lists the files its recipe reads in :meth:`ArrayDataset.source_files`, and
implements :meth:`ArrayDataset.recipe`, which builds an :class:`ArrayData` at run time from
those files (never from committed data). crossedge caches the result under
``cache_dir()/datasets/NAME`` as ``arrays.safetensors`` plus ``manifest.json``, written
atomically, verified on every load and rebuilt when ``recipe_version`` changes.

numpy and safetensors are imported inside functions so that registering a dataset (which
imports this module) stays cheap for ``crossedge --help``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..cache import cache_dir, locked, sha256_file, staging_dir
from ..errors import CrossedgeError

if TYPE_CHECKING:
    import numpy as np

FORMAT = "crossedge.array-dataset/1"
ARRAYS_NAME = "arrays.safetensors"
MANIFEST_NAME = "manifest.json"


class ArrayDatasetError(CrossedgeError):
    """An array dataset's recipe produced inconsistent arrays, or a split or domain was misnamed."""


class DatasetCacheError(ArrayDatasetError):
    """A cached array dataset is damaged, truncated or unreadable; the message says how to rebuild."""


def rebuild_command(name: str) -> str:
    """The command that rebuilds a cached array dataset from its sources."""
    return f"crossedge datasets build {name} --force"


@dataclass(frozen=True)
class DomainTable:
    """Per-window integer domain columns (subject, device, session, ...) and the name of each value."""

    columns: Mapping[str, np.ndarray]
    values: Mapping[str, tuple[str, ...]]

    def names(self) -> list[str]:
        """Column names, in the order the recipe gave them."""
        return list(self.columns)

    def codes(self, column: str) -> np.ndarray:
        """The integer code of ``column`` for every window."""
        if column not in self.columns:
            known = ", ".join(self.columns) or "none"
            raise ArrayDatasetError(f"no domain column {column!r}; the columns are: {known}")
        return self.columns[column]

    def code(self, column: str, value: str | int) -> int:
        """The integer code of a value given by name (or already as a code)."""
        self.codes(column)
        names = self.values[column]
        if isinstance(value, int) and not isinstance(value, bool):
            if not 0 <= value < len(names):
                raise ArrayDatasetError(f"domain {column}={value} is out of range 0..{len(names) - 1}")
            return value
        if value not in names:
            raise ArrayDatasetError(
                f"no value {value!r} in domain column {column!r}; its values are: {', '.join(names)}"
            )
        return names.index(value)


@dataclass
class ArrayData:
    """What a recipe returns and what :meth:`ArrayDataset.load` gives back.

    ``partitions`` lists groups of split names that claim to be pairwise disjoint and to
    cover every window together (``[("train", "val", "test")]``); the conformance suite
    holds the dataset to that claim.
    """

    x: np.ndarray
    y: np.ndarray
    label_names: tuple[str, ...]
    domains: DomainTable
    splits: dict[str, np.ndarray] = field(default_factory=dict)
    partitions: list[tuple[str, ...]] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(N, T, C): windows, time steps, channels."""
        n, t, c = self.x.shape
        return int(n), int(t), int(c)

    def split(self, name: str) -> np.ndarray:
        """The window indices of a named split."""
        if name not in self.splits:
            raise ArrayDatasetError(f"no split {name!r}; the splits are: {', '.join(self.splits) or 'none'}")
        return self.splits[name]

    def leave_one_domain_out(self, column: str, value: str | int) -> tuple[np.ndarray, np.ndarray]:
        """(train indices, test indices): every window of ``column=value`` is in test, every other in train."""
        return leave_one_domain_out(self.domains, column, value)

    def tensors(self) -> dict[str, np.ndarray]:
        """The flat name -> array mapping stored in the safetensors file."""
        flat = {"x": self.x, "y": self.y}
        flat.update({f"domain/{k}": v for k, v in self.domains.columns.items()})
        flat.update({f"split/{k}": v for k, v in self.splits.items()})
        return flat


def leave_one_domain_out(domains: DomainTable, column: str, value: str | int) -> tuple[np.ndarray, np.ndarray]:
    """Split window indices into (train, test) where test holds exactly the windows of ``column=value``."""
    import numpy as np

    codes = domains.codes(column)
    target = domains.code(column, value)
    mask = codes == target
    return np.flatnonzero(~mask).astype(np.int64), np.flatnonzero(mask).astype(np.int64)


def stratified_split(
    y: np.ndarray, fraction: float, *, seed: int, indices: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``indices`` (default all windows) into (first, second), about ``fraction`` of each class in first.

    Each class is shuffled with its own seeded generator and rounded separately, so the class
    balance holds in both parts and the same seed gives the same split on every machine.
    """
    import numpy as np

    if not 0.0 < fraction < 1.0:
        raise ArrayDatasetError(f"split fraction must be between 0 and 1, got {fraction}")
    pool = np.arange(len(y), dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64)
    first, second = [], []
    labels = np.asarray(y)[pool]
    for label in np.unique(labels):
        members = pool[labels == label]
        rng = np.random.default_rng([seed, int(label)])
        shuffled = members[rng.permutation(len(members))]
        cut = int(round(fraction * len(members)))
        first.append(shuffled[:cut])
        second.append(shuffled[cut:])

    def join(parts: list[np.ndarray]) -> np.ndarray:
        return np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)

    return join(first), join(second)


def tensor_sha256(array: np.ndarray) -> str:
    """SHA-256 of an array's C-order bytes (little-endian, as safetensors stores them)."""
    import numpy as np

    data = np.ascontiguousarray(array)
    if data.dtype.byteorder == ">":
        data = data.astype(data.dtype.newbyteorder("<"))
    return hashlib.sha256(data.tobytes()).hexdigest()


class ArrayDataset:
    """Base class of registered array datasets: a recipe from local files, cached and verified.

    Register instances through ``register_datasets``. Subclasses set the class attributes and
    implement :meth:`recipe`; everything else (caching, manifests, verification) is here.
    """

    name: str = ""
    description: str = ""
    #: the dataset's own version (what data it describes)
    version: str = "1"
    #: bump whenever the recipe's output changes; a cache built by another recipe version is rebuilt
    recipe_version: str = "1"
    label_names: tuple[str, ...] = ()

    # ---------------------------------------------------------------- to implement

    def source_files(self) -> list[Path]:
        """Files the recipe reads; their sizes and SHA-256 go into the manifest. None for synthetic data."""
        return []

    def recipe(self) -> ArrayData:
        """Build the arrays from :meth:`source_files` at run time."""
        raise NotImplementedError

    # ---------------------------------------------------------------- the cache

    def cache_path(self) -> Path:
        """The folder holding this dataset's ``arrays.safetensors`` and ``manifest.json``."""
        return cache_dir() / "datasets" / self.name

    def is_built(self) -> bool:
        """Whether a cache entry of the current recipe version exists (it is not verified here)."""
        manifest = self._read_manifest_or_none()
        return manifest is not None and manifest.get("recipe_version") == self.recipe_version

    def build(self, force: bool = False) -> ArrayData:
        """Run the recipe and write the cache (unless a current entry exists and ``force`` is false)."""
        with locked(self.cache_path()):
            if not force and self.is_built():
                return self._load_verified()
            return self._build_locked()

    def load(self) -> ArrayData:
        """The cached arrays, verified; built first when missing or made by another recipe version."""
        # under the lock, so a build in another process never swaps the folder between our reads
        with locked(self.cache_path()):
            if not self.is_built():
                return self._build_locked()
            return self._load_verified()

    def verify(self) -> dict[str, Any]:
        """Re-hash the cached file and every tensor against the manifest; returns the manifest."""
        with locked(self.cache_path()):
            return self._load_verified().manifest

    def info(self) -> dict[str, Any]:
        """Facts for ``crossedge datasets info``: the manifest when built, else what the class declares."""
        manifest = self._read_manifest_or_none()
        facts: dict[str, Any] = {
            "name": self.name,
            "kind": "array",
            "description": self.description,
            "version": self.version,
            "recipe_version": self.recipe_version,
            "label_names": list(self.label_names),
            "path": str(self.cache_path()),
            "built": manifest is not None and manifest.get("recipe_version") == self.recipe_version,
        }
        if facts["built"]:
            n, t, c = manifest["tensors"]["x"]["shape"]
            facts.update(
                n=n,
                t=t,
                c=c,
                domains={k: v["values"] for k, v in manifest["domains"].items()},
                splits={k: v["size"] for k, v in manifest["splits"].items()},
                sources=manifest["sources"],
            )
        return facts

    # ---------------------------------------------------------------- internals

    def _read_manifest_or_none(self) -> dict[str, Any] | None:
        path = self.cache_path() / MANIFEST_NAME
        if not path.exists():
            return None
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise self._damaged(f"{path} is unreadable ({type(exc).__name__})") from exc
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise self._damaged(f"{path} is not a {FORMAT} manifest")
        return manifest

    def _damaged(self, why: str) -> DatasetCacheError:
        return DatasetCacheError(
            f"cached array dataset {self.name!r} is damaged: {why}; rebuild it with `{rebuild_command(self.name)}`"
        )

    def _build_locked(self) -> ArrayData:
        """Run the recipe, check its output and replace the cache entry atomically; the caller holds the lock."""
        sources = self._hash_sources()
        data = self.recipe()
        manifest = self._check(data, sources)
        with staging_dir(self.cache_path()) as work:
            from safetensors.numpy import save_file

            arrays = work / ARRAYS_NAME
            import numpy as np

            # safetensors writes an array's buffer as it lies: a Fortran-ordered recipe output would read back scrambled
            tensors = {key: np.ascontiguousarray(value) for key, value in data.tensors().items()}
            save_file(tensors, str(arrays), metadata={"format": FORMAT, "name": self.name})
            manifest["file"] = {"size": arrays.stat().st_size, "sha256": sha256_file(arrays)}
            (work / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
        data.manifest = manifest
        return data

    def _hash_sources(self) -> list[dict[str, Any]]:
        """Size and SHA-256 of every source file; checked before the recipe runs so a missing one fails fast."""
        sources = []
        for path in self.source_files():
            path = Path(path)
            if not path.is_file():
                raise ArrayDatasetError(f"array dataset {self.name!r}: source file {path} is not on this machine")
            sources.append({"path": str(path), "size": path.stat().st_size, "sha256": sha256_file(path)})
        return sources

    def _check(self, data: ArrayData, sources: list[dict[str, Any]]) -> dict[str, Any]:
        """Refuse inconsistent recipe output; return the manifest that describes it."""
        import numpy as np

        who = f"array dataset {self.name!r}"
        if not isinstance(data.x, np.ndarray) or data.x.ndim != 3 or data.x.dtype != np.float32:
            raise ArrayDatasetError(f"{who}: x must be a float32 array of shape (N, T, C), got {_describe(data.x)}")
        n = data.x.shape[0]
        if not isinstance(data.y, np.ndarray) or data.y.shape != (n,) or data.y.dtype != np.int64:
            raise ArrayDatasetError(f"{who}: y must be an int64 array of shape ({n},), got {_describe(data.y)}")
        if tuple(data.label_names) != tuple(self.label_names):
            raise ArrayDatasetError(
                f"{who}: the recipe's label names {data.label_names} differ from {self.label_names}"
            )
        if n and (data.y.min() < 0 or data.y.max() >= len(data.label_names)):
            raise ArrayDatasetError(f"{who}: labels must lie in 0..{len(data.label_names) - 1}")
        if set(data.domains.columns) != set(data.domains.values):
            raise ArrayDatasetError(f"{who}: every domain column needs the names of its values")
        for column, codes in data.domains.columns.items():
            if not isinstance(codes, np.ndarray) or codes.shape != (n,) or codes.dtype != np.int64:
                raise ArrayDatasetError(f"{who}: domain column {column!r} must be int64 of shape ({n},)")
            if n and (codes.min() < 0 or codes.max() >= len(data.domains.values[column])):
                raise ArrayDatasetError(f"{who}: domain column {column!r} has codes without a value name")
        for split, indices in data.splits.items():
            if not isinstance(indices, np.ndarray) or indices.ndim != 1 or indices.dtype != np.int64:
                raise ArrayDatasetError(f"{who}: split {split!r} must be a 1-D int64 index array")
            if len(indices) and (indices.min() < 0 or indices.max() >= n):
                raise ArrayDatasetError(f"{who}: split {split!r} has indices outside 0..{n - 1}")
        for group in data.partitions:
            unknown = [s for s in group if s not in data.splits]
            if unknown:
                raise ArrayDatasetError(f"{who}: partition {group} names splits that do not exist: {unknown}")
        return {
            "format": FORMAT,
            "name": self.name,
            "version": self.version,
            "recipe_version": self.recipe_version,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "label_names": list(data.label_names),
            "domains": {k: {"values": list(data.domains.values[k])} for k in data.domains.columns},
            "splits": {k: {"size": len(v)} for k, v in data.splits.items()},
            "partitions": [list(g) for g in data.partitions],
            "sources": sources,
            "tensors": {
                key: {"shape": list(arr.shape), "dtype": str(arr.dtype), "sha256": tensor_sha256(arr)}
                for key, arr in data.tensors().items()
            },
        }

    def _load_verified(self) -> ArrayData:
        """Read the cache entry and check the file hash, every tensor's shape, dtype and checksum."""
        folder = self.cache_path()
        manifest = self._read_manifest_or_none()
        if manifest is None:
            raise self._damaged(f"{folder / MANIFEST_NAME} is missing")
        arrays = folder / ARRAYS_NAME
        try:
            expected_file = manifest["file"]
            size = arrays.stat().st_size
        except (KeyError, TypeError) as exc:
            raise self._damaged(f"{folder / MANIFEST_NAME} has no file record") from exc
        except OSError as exc:
            raise self._damaged(f"{arrays} is missing") from exc
        if size != expected_file["size"]:
            raise self._damaged(f"{arrays} is {size} bytes, the manifest says {expected_file['size']} (truncated?)")
        if sha256_file(arrays) != expected_file["sha256"]:
            raise self._damaged(f"{arrays} does not match its recorded SHA-256")
        try:
            from safetensors.numpy import load_file

            flat = load_file(str(arrays))
        except Exception as exc:  # safetensors raises its own error types and struct.error on bad headers
            raise self._damaged(f"{arrays} cannot be read ({type(exc).__name__})") from exc
        declared = manifest.get("tensors", {})
        if set(flat) != set(declared):
            raise self._damaged(f"{arrays} holds tensors {sorted(flat)}, the manifest lists {sorted(declared)}")
        for key, arr in flat.items():
            want = declared[key]
            if (
                list(arr.shape) != want["shape"]
                or str(arr.dtype) != want["dtype"]
                or tensor_sha256(arr) != want["sha256"]
            ):
                raise self._damaged(f"tensor {key!r} does not match the manifest")
        domains = DomainTable(
            columns={k: flat[f"domain/{k}"] for k in manifest["domains"]},
            values={k: tuple(v["values"]) for k, v in manifest["domains"].items()},
        )
        return ArrayData(
            x=flat["x"],
            y=flat["y"],
            label_names=tuple(manifest["label_names"]),
            domains=domains,
            splits={k: flat[f"split/{k}"] for k in manifest["splits"]},
            partitions=[tuple(g) for g in manifest["partitions"]],
            manifest=manifest,
        )


def _describe(value: Any) -> str:
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    return f"{type(value).__name__} shape={shape} dtype={dtype}" if shape is not None else type(value).__name__


def get_array_dataset(name: str) -> ArrayDataset:
    """Look up a registered dataset by name or alias and insist that it is an array dataset."""
    from ..registry import get_registry

    dataset = get_registry("dataset").get(name)
    if not isinstance(dataset, ArrayDataset):
        raise ArrayDatasetError(f"dataset {name!r} is a text dataset, not an array dataset")
    return dataset
