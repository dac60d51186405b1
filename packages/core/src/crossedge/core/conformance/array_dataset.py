"""Conformance suite for array datasets: subclass :class:`ArrayDatasetConformance` and give a fixture.

```python
import pytest
from crossedge.core.conformance.array_dataset import ArrayDatasetConformance


class TestMyWindows(ArrayDatasetConformance):
    @pytest.fixture
    def array_dataset(self):
        return MyWindows()
```

Every test runs against an empty cache in a temporary folder, so the suite never touches the
user's cache. Keep the dataset under test small (a few hundred windows): the suite builds it
several times.
"""

from __future__ import annotations

import os

import pytest

from crossedge.core.contracts.array_dataset import ARRAYS_NAME, MANIFEST_NAME, ArrayDataset, DatasetCacheError


class ArrayDatasetConformance:
    """Shared checks every :class:`ArrayDataset` passes; a subclass supplies the ``array_dataset`` fixture."""

    @pytest.fixture
    def array_dataset(self) -> ArrayDataset:
        """The dataset under test; override in the subclass."""
        raise NotImplementedError("declare an `array_dataset` fixture returning the ArrayDataset under test")

    @pytest.fixture(autouse=True)
    def _private_cache(self, tmp_path, monkeypatch):
        monkeypatch.setenv("CROSSEDGE_CACHE", str(tmp_path / "conformance-cache"))

    def test_is_an_array_dataset_with_a_name(self, array_dataset):
        assert isinstance(array_dataset, ArrayDataset)
        assert isinstance(array_dataset.name, str) and array_dataset.name
        assert array_dataset.description

    def test_shapes_and_dtypes_agree_with_the_manifest(self, array_dataset):
        data = array_dataset.load()
        manifest = data.manifest
        n, t, c = data.x.shape
        assert n > 0 and t > 0 and c > 0
        assert str(data.x.dtype) == "float32"
        assert data.y.shape == (n,) and str(data.y.dtype) == "int64"
        for key, array in data.tensors().items():
            assert manifest["tensors"][key]["shape"] == list(array.shape), key
            assert manifest["tensors"][key]["dtype"] == str(array.dtype), key
        assert manifest["name"] == array_dataset.name
        assert manifest["recipe_version"] == array_dataset.recipe_version
        assert manifest["label_names"] == list(array_dataset.label_names) == list(data.label_names)
        assert set(manifest["domains"]) == set(data.domains.names())
        assert int(data.y.min()) >= 0 and int(data.y.max()) < len(data.label_names)
        for source in manifest["sources"]:
            assert len(source["sha256"]) == 64 and source["size"] >= 0

    def test_every_domain_column_names_its_values(self, array_dataset):
        data = array_dataset.load()
        assert data.domains.names(), "an array dataset needs at least one domain column"
        for column in data.domains.names():
            codes = data.domains.codes(column)
            assert codes.shape == data.y.shape
            assert int(codes.min()) >= 0 and int(codes.max()) < len(data.domains.values[column])

    def test_splits_are_disjoint_and_cover_what_they_claim(self, array_dataset):
        import numpy as np

        data = array_dataset.load()
        n = data.x.shape[0]
        for name, indices in data.splits.items():
            assert len(np.unique(indices)) == len(indices), f"split {name!r} repeats windows"
            assert len(indices) == 0 or (indices.min() >= 0 and indices.max() < n), name
        for group in data.partitions:
            seen = np.concatenate([data.split(name) for name in group])
            assert len(np.unique(seen)) == len(seen), f"splits {group} overlap"
            assert np.array_equal(np.sort(seen), np.arange(n)), f"splits {group} do not cover all {n} windows"

    def test_cache_round_trips_bit_identically(self, array_dataset):
        built = array_dataset.build(force=True)
        loaded = array_dataset.load()
        assert set(built.tensors()) == set(loaded.tensors())
        for key, array in built.tensors().items():
            other = loaded.tensors()[key]
            assert array.dtype == other.dtype and array.shape == other.shape, key
            assert array.tobytes() == other.tobytes(), f"tensor {key!r} changed on its way through the cache"
        rebuilt = array_dataset.build(force=True)
        assert rebuilt.manifest["tensors"] == built.manifest["tensors"], "the recipe is not deterministic"

    def test_flipped_byte_is_detected(self, array_dataset):
        array_dataset.build(force=True)
        path = array_dataset.cache_path() / ARRAYS_NAME
        stat = path.stat()
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        path.write_bytes(bytes(raw))
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # bit rot keeps the mtime
        with pytest.raises(DatasetCacheError, match=f"crossedge datasets build {array_dataset.name} --force"):
            array_dataset.load()
        array_dataset.build(force=True)
        array_dataset.load()

    def test_truncated_file_and_broken_manifest_are_one_line_errors(self, array_dataset):
        array_dataset.build(force=True)
        folder = array_dataset.cache_path()
        (folder / ARRAYS_NAME).write_bytes((folder / ARRAYS_NAME).read_bytes()[:4])
        with pytest.raises(DatasetCacheError, match="--force") as caught:
            array_dataset.load()
        assert "\n" not in str(caught.value)
        (folder / MANIFEST_NAME).write_text('{"format": ')
        with pytest.raises(DatasetCacheError, match="--force"):
            array_dataset.load()

    def test_a_new_recipe_version_rebuilds(self, array_dataset, monkeypatch):
        array_dataset.build(force=True)
        monkeypatch.setattr(array_dataset, "recipe_version", f"{array_dataset.recipe_version}+conformance")
        assert not array_dataset.is_built()
        assert array_dataset.load().manifest["recipe_version"] == array_dataset.recipe_version
        assert array_dataset.is_built()

    def test_leave_one_domain_out_leaves_the_domain_out(self, array_dataset):
        import numpy as np

        data = array_dataset.load()
        n = data.x.shape[0]
        for column in data.domains.names():
            codes = data.domains.codes(column)
            for code, value in enumerate(data.domains.values[column]):
                train, test = data.leave_one_domain_out(column, value)
                assert np.all(codes[test] == code), f"{column}={value}: test holds other domains"
                assert not np.any(codes[train] == code), f"{column}={value}: train holds the held-out domain"
                assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(n))
