"""The array-dataset contract: synthetic-shift passes the conformance suite; splits, errors and the CLI."""

import json

import numpy as np
import pytest

from crossedge.core import hookimpl, registered
from crossedge.core.builtins.datasets import SyntheticShift
from crossedge.core.conformance.array_dataset import ArrayDatasetConformance
from crossedge.core.contracts.array_dataset import (
    ARRAYS_NAME,
    ArrayData,
    ArrayDataset,
    ArrayDatasetError,
    DomainTable,
    get_array_dataset,
    stratified_split,
)


class TestSyntheticShiftConforms(ArrayDatasetConformance):
    @pytest.fixture
    def array_dataset(self):
        return get_array_dataset("synthetic-shift")


class TestAnotherShapeConforms(ArrayDatasetConformance):
    @pytest.fixture
    def array_dataset(self):
        return SyntheticShift("synthetic-small", subjects=3, sessions=1, classes=2, windows=5, length=16, channels=2)


def test_synthetic_shift_shifts_each_subject_differently(cache):
    data = get_array_dataset("synthetic-shift").load()
    assert data.shape == (192, 32, 3)
    means = [data.x[data.domains.codes("subject") == s].mean(axis=(0, 1)) for s in range(4)]
    assert min(np.abs(a - b).max() for i, a in enumerate(means) for b in means[i + 1 :]) > 0.1


def test_stratified_split_keeps_class_balance_and_is_seeded():
    y = np.repeat(np.arange(3), [30, 60, 90])
    first, second = stratified_split(y, 0.5, seed=7)
    assert np.bincount(y[first]).tolist() == [15, 30, 45]
    assert len(np.intersect1d(first, second)) == 0 and len(first) + len(second) == len(y)
    again, _ = stratified_split(y, 0.5, seed=7)
    other, _ = stratified_split(y, 0.5, seed=8)
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    sub, rest = stratified_split(y, 0.5, seed=7, indices=second)
    assert set(sub) | set(rest) == set(second)
    with pytest.raises(ArrayDatasetError, match="between 0 and 1"):
        stratified_split(y, 1.5, seed=0)


def test_unknown_domain_column_and_value_list_the_valid_ones(cache):
    data = get_array_dataset("synthetic-shift").load()
    with pytest.raises(ArrayDatasetError, match="columns are: subject, session"):
        data.leave_one_domain_out("device", "s0")
    with pytest.raises(ArrayDatasetError, match="values are: s0, s1, s2, s3"):
        data.leave_one_domain_out("subject", "s9")
    train, test = data.leave_one_domain_out("subject", 1)
    assert set(data.domains.codes("subject")[test]) == {1}
    with pytest.raises(ArrayDatasetError, match="no split 'holdout'; the splits are: train, val, test"):
        data.split("holdout")


class FromFile(ArrayDataset):
    """A recipe that reads a local .npy file, as a real sensing dataset would."""

    name = "from-file"
    description = "windows read from one file"
    label_names = ("a", "b")

    def __init__(self, path, dtype=np.float32):
        self.path, self.dtype = path, dtype

    def source_files(self):
        return [self.path]

    def recipe(self):
        x = np.load(self.path).astype(self.dtype)
        y = (np.arange(len(x)) % 2).astype(np.int64)
        domains = DomainTable({"device": np.zeros(len(x), np.int64)}, {"device": ("phone",)})
        return ArrayData(x=x, y=y, label_names=self.label_names, domains=domains)


def test_sources_are_hashed_into_the_manifest(cache, tmp_path):
    path = tmp_path / "raw.npy"
    np.save(path, np.ones((4, 8, 2)))
    manifest = FromFile(path).build().manifest
    assert manifest["sources"][0]["path"] == str(path)
    assert len(manifest["sources"][0]["sha256"]) == 64
    with pytest.raises(ArrayDatasetError, match="source file .*missing.npy is not on this machine"):
        FromFile(tmp_path / "missing.npy").build(force=True)


def test_a_fortran_ordered_recipe_output_round_trips_through_the_cache(cache):
    class Transposed(SyntheticShift):
        def recipe(self):
            data = super().recipe()
            data.x = np.asfortranarray(data.x)  # what a (C, T) -> (T, C) transpose of a loader's arrays gives
            return data

    built = Transposed("synthetic-fortran", windows=3).build()
    loaded = Transposed("synthetic-fortran", windows=3).load()
    assert np.array_equal(loaded.x, built.x) and loaded.x.flags.c_contiguous


def test_inconsistent_recipe_output_is_refused_and_the_old_entry_kept(cache, tmp_path):
    path = tmp_path / "raw.npy"
    np.save(path, np.ones((4, 8, 2)))
    good = FromFile(path).build()
    with pytest.raises(ArrayDatasetError, match="x must be a float32 array"):
        FromFile(path, dtype=np.float64).build(force=True)
    again = FromFile(path).load()
    assert again.manifest["file"] == good.manifest["file"]
    assert not [p for p in (cache / "datasets").iterdir() if p.name.endswith(".partial")]


def test_a_failing_recipe_leaves_the_cache_as_it_was(cache):
    dataset = SyntheticShift("synthetic-fails")
    dataset.build()
    before = (dataset.cache_path() / ARRAYS_NAME).read_bytes()

    def boom():
        raise RuntimeError("recipe interrupted")

    dataset.recipe = boom
    with pytest.raises(RuntimeError):
        dataset.build(force=True)
    assert (dataset.cache_path() / ARRAYS_NAME).read_bytes() == before


class ArrayPlugin:
    @hookimpl
    def register_datasets(self, register):
        register(SyntheticShift("plugin-windows", subjects=2, windows=2))


def test_cli_lists_both_kinds_and_builds_and_describes(cli, cache):
    with registered(ArrayPlugin(), name="array-plugin"):
        rows = {r["name"]: r for r in json.loads(cli("datasets", "list", "--json").stdout)}
        assert rows["pydoc-topics"]["kind"] == "text" and rows["pydoc-topics"]["n"] is None
        assert rows["plugin-windows"]["kind"] == "array" and rows["plugin-windows"]["built"] is False
        built = cli("datasets", "build", "plugin-windows")
        assert built.exit_code == 0, built.output
        assert "N=24 T=32 C=3" in built.stdout
        rows = {r["name"]: r for r in json.loads(cli("datasets", "list", "--json").stdout)}
        assert (rows["plugin-windows"]["n"], rows["plugin-windows"]["t"], rows["plugin-windows"]["c"]) == (24, 32, 3)
        info = json.loads(cli("datasets", "info", "plugin-windows", "--json").stdout)
        assert info["domains"]["subject"] == ["s0", "s1"]
        assert info["splits"] == {"train": 15, "val": 6, "test": 3}  # 60% of 8 per class, then half the rest
        assert info["plugin"] == "array-plugin"


def test_cli_damaged_cache_is_one_red_line_naming_the_rebuild_command(cli, cache):
    assert cli("datasets", "build", "synthetic-shift").exit_code == 0
    path = get_array_dataset("synthetic-shift").cache_path() / ARRAYS_NAME
    path.write_bytes(path.read_bytes()[:-10])
    result = cli("datasets", "build", "synthetic-shift")
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 2  # the progress line and the error
    assert "Error: cached array dataset 'synthetic-shift' is damaged" in result.stderr
    assert "crossedge datasets build synthetic-shift --force" in result.stderr
    rows = {r["name"]: r for r in json.loads(cli("datasets", "list", "--json").stdout)}
    assert rows["synthetic-shift"]["built"] is True  # list reads manifests only; build, load and --verify hash
    verified = cli("datasets", "info", "synthetic-shift", "--verify")
    assert verified.exit_code == 1 and "--force" in verified.stderr
    assert cli("datasets", "build", "synthetic-shift", "--force").exit_code == 0
    assert json.loads(cli("datasets", "info", "synthetic-shift", "--verify", "--json").stdout)["verified"] is True


def test_cli_build_refuses_a_text_dataset(cli, cache):
    result = cli("datasets", "build", "pydoc-topics")
    assert result.exit_code == 1
    assert "text dataset, not an array dataset" in result.stderr
