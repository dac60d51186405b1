"""Where a sensing run's windows come from: a registered array dataset, a folder or file on disk, or several.

``load_data("watch")`` loads a registered dataset from the verified cache;
``load_data("/data/UCI HAR Dataset")`` reads a folder through :mod:`crossedge.sensing.formats`
(with the loader options given); ``load_data("a+b")`` combines datasets with the same window
shape into one whose ``dataset`` column tells them apart (the cross-dataset scenario).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from crossedge.core.contracts.array_dataset import ArrayData, ArrayDatasetError, DomainTable

_MEMO: dict[str, ArrayData] = {}


def _memo_key(dataset: str, options: Mapping[str, Any] | None) -> str:
    return json.dumps([dataset, dict(options or {})], sort_keys=True, default=str)


def load_data(dataset: str, options: Mapping[str, Any] | None = None) -> ArrayData:
    """The windows ``dataset`` names (registered name, path, or ``a+b``); loaded once per process."""
    key = _memo_key(dataset, options)
    if key not in _MEMO:
        _MEMO[key] = _load(dataset, options)
    return _MEMO[key]


def _load(dataset: str, options: Mapping[str, Any] | None) -> ArrayData:
    from crossedge.core.registry import get_registry

    registry = get_registry("dataset")
    if dataset in registry:
        from crossedge.core.contracts.array_dataset import get_array_dataset

        if options:
            raise ArrayDatasetError(
                f"loader options {sorted(options)} apply to files on disk, not to the registered dataset {dataset!r}"
            )
        return get_array_dataset(dataset).load()
    path = Path(dataset).expanduser()
    if path.exists():
        return load_path_with(path, options)
    if "+" in dataset:
        return combine([load_data(part, options) for part in dataset.split("+")], dataset.split("+"))
    known = ", ".join(n for n in registry.names()) or "none"
    raise ArrayDatasetError(
        f"no dataset or path {dataset!r}: give a registered dataset ({known}), a folder or file of recordings, "
        f"or several joined with '+'; `crossedge sensing datasets` lists them"
    )


def load_path_with(path: Path, options: Mapping[str, Any] | None) -> ArrayData:
    """Read recordings from ``path``: ``options`` are the command's strings (``format`` may be a spec).

    They stay plain JSON values in a sweep's records (so a resumed sweep recognises its jobs)
    and become :class:`crossedge.sensing.formats.LoadOptions` only here.
    """
    import dataclasses

    from .formats import LoadOptions, load_path

    rest = dict(options or {})
    spec = rest.pop("format", None)
    base = LoadOptions.parse(spec) if spec else LoadOptions()
    return load_path(path, dataclasses.replace(base, **rest))


def combine(parts: list[ArrayData], names: list[str]) -> ArrayData:
    """One dataset from several with the same (T, C): labels and domain values merged by name."""
    import numpy as np

    shapes = {p.x.shape[1:] for p in parts}
    if len(shapes) != 1:
        listed = ", ".join(f"{n}: T={p.x.shape[1]}, C={p.x.shape[2]}" for n, p in zip(names, parts, strict=True))
        raise ArrayDatasetError(
            f"cannot combine datasets with different window shapes ({listed}); "
            "load them from files with the same --window and --rate"
        )
    labels = sorted({name for p in parts for name in p.label_names})
    columns = list(dict.fromkeys(c for p in parts for c in p.domains.names()))
    ys, codes = [], {c: [] for c in columns}
    values: dict[str, list[str]] = {c: [] for c in columns}
    for name, part in zip(names, parts, strict=True):
        remap = np.asarray([labels.index(n) for n in part.label_names], dtype=np.int64)
        ys.append(remap[part.y])
        for column in columns:
            if column in part.domains.columns:
                own = part.domains.values[column]
                strings = [own[c] for c in part.domains.codes(column)]
            else:
                strings = ["unknown"] * len(part.y)
            if column == "dataset" and set(strings) == {part.domains.values.get("dataset", ("",))[0]}:
                strings = [name] * len(part.y)  # the part's own name tells the parts apart
            for value in strings:
                if value not in values[column]:
                    values[column].append(value)
            codes[column].append(np.asarray([values[column].index(v) for v in strings], dtype=np.int64))
    return ArrayData(
        x=np.concatenate([p.x for p in parts]),
        y=np.concatenate(ys),
        label_names=tuple(labels),
        domains=DomainTable(
            columns={c: np.concatenate(codes[c]) for c in columns},
            values={c: tuple(values[c]) for c in columns},
        ),
    )
