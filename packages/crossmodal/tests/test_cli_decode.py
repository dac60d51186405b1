"""``crossedge crossmodal bench --task scp-cross-subject`` on two tiny fixture datasets with few steps."""

import hashlib
import json

import numpy as np
import pytest
from click.testing import CliRunner

from crossedge.core import hookimpl, registered
from crossedge.core.cli import build_cli
from crossedge.crossmodal.datasets.neuro import NeuroTsDataset


def write_problem(folder, stem, n_train, n_test, length, channels, seed):
    """A two-class .ts problem: class 1 has a raised first channel."""
    rng = np.random.default_rng(seed)
    files = {}
    for split, n in (("TRAIN", n_train), ("TEST", n_test)):
        lines = [
            f"@problemName {stem}\n@dimensions {channels}\n@equalLength true\n@seriesLength {length}\n"
            "@classLabel true negativity positivity\n@data"
        ]
        for i in range(n):
            x = rng.normal(size=(channels, length)).round(3)
            x[0] += 1.5 if i % 2 else -1.5
            lines.append(":".join(",".join(map(str, row)) for row in x) + (":positivity" if i % 2 else ":negativity"))
        path = folder / f"{stem}_{split}.ts"
        path.write_text("\n".join(lines) + "\n")
        files[f"data/{stem}/{path.name}"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return NeuroTsDataset(stem.lower(), stem, files, ("negativity", "positivity"), subject=stem, root=folder)


class FixturePlugin:
    def __init__(self, datasets):
        self.datasets = datasets

    @hookimpl
    def register_datasets(self, register):
        for dataset in self.datasets:
            register(dataset, name=dataset.name)


@pytest.fixture
def cli(plugin, tmp_path, monkeypatch):
    monkeypatch.setenv("CROSSEDGE_CACHE", str(tmp_path / "cache"))
    source = write_problem(tmp_path, "TinySrc", 40, 10, 24, 2, 0)
    target = write_problem(tmp_path, "TinyTgt", 30, 20, 30, 3, 1)
    runner = CliRunner()
    with registered(FixturePlugin([source, target]), name="decode-fixtures"):
        yield lambda *args: runner.invoke(build_cli(), list(args), catch_exceptions=False)


def test_bench_prints_every_method_and_shot_and_writes_json(cli, tmp_path):
    out = tmp_path / "bench.json"
    result = cli(
        "crossmodal", "bench", "--task", "scp-cross-subject", "--source", "tinysrc", "--target", "tinytgt",
        "--shots", "4,10", "--seeds", "2", "--pretrain-steps", "40", "--tune-steps", "30", "--json", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    for word in ("adapters", "alone", "no-adapters", "k=4", "k=10", "tinysrc -> tinytgt"):
        assert word in result.output
    data = json.loads(out.read_text())
    assert data["shots"] == [4, 10] and data["seeds"] == [0, 1] and data["test_trials"] == 20
    for method in ("adapters", "alone", "no-adapters"):
        for k in ("4", "10"):
            cell = data["results"][method][k]
            assert len(cell["per_seed"]) == 2 and all(0 <= a <= 1 for a in cell["per_seed"])
            assert cell["mean"] == pytest.approx(np.mean(cell["per_seed"]))
    # the fixture's class signal sits on channel 0 in both subjects: the adapted model finds it from 10 trials
    assert data["results"]["adapters"]["10"]["mean"] > 0.75
    # the full-data linear ceiling sees the raised channel 0 in the window means
    assert data["ceiling"]["accuracy"] > 0.9 and "ceiling:" in result.output


def test_window_means_average_each_window():
    from crossedge.crossmodal.decoding_bench import window_means

    x = np.arange(2 * 8 * 3, dtype=float).reshape(2, 8, 3)
    out = window_means(x, windows=4)
    assert out.shape == (2, 12)
    assert out[0, :3].tolist() == x[0, :2].mean(axis=0).tolist()
    assert out[1, -3:].tolist() == x[1, 6:].mean(axis=0).tolist()


def test_bench_refuses_more_shots_than_the_target_has(cli):
    result = cli(
        "crossmodal", "bench", "--task", "scp-cross-subject", "--source", "tinysrc", "--target", "tinytgt",
        "--shots", "31", "--seeds", "1", "--pretrain-steps", "2", "--tune-steps", "2",
    )  # fmt: skip
    assert result.exit_code != 0 and "outside 1..30" in result.output


def test_neuro_classify_and_plots(cli, tmp_path):
    out, png = tmp_path / "cls.json", tmp_path / "cls.png"
    result = cli(
        "crossmodal", "bench", "--task", "neuro-classify", "--datasets", "tinysrc,tinytgt", "--seeds", "2",
        "--pretrain-steps", "40", "--json", str(out), "--plot", str(png),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert list(data["results"]) == ["tinysrc", "tinytgt"]
    row = data["results"]["tinytgt"]
    assert len(row["per_seed"]) == 2 and row["train_trials"] == 30 and row["test_trials"] == 20
    assert row["mean"] > 0.75 and row["ceiling"] > 0.9 and row["chance"] == 0.5
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    scp_png = tmp_path / "scp.png"
    result = cli(
        "crossmodal", "bench", "--task", "scp-cross-subject", "--source", "tinysrc", "--target", "tinytgt",
        "--shots", "4", "--seeds", "1", "--pretrain-steps", "5", "--tune-steps", "5", "--plot", str(scp_png),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert scp_png.read_bytes()[:4] == b"\x89PNG"


def test_neuro_classify_needs_a_dataset(cli):
    result = cli("crossmodal", "bench", "--task", "neuro-classify", "--datasets", ",")
    assert result.exit_code != 0 and "at least one dataset" in result.output
