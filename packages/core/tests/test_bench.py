"""The benchmark harness: statistics, ratios, report schema, tables and plots."""

import json

import pytest
import torch

from crossedge.core import BenchmarkError
from crossedge.core.bench import (
    BenchmarkReport,
    Measurement,
    format_table,
    geometric_mean,
    measure,
    plot_bars,
    ratio,
    threads,
    validate_report,
)


def test_measurement_statistics():
    m = Measurement("x", [4.0, 1.0, 3.0, 2.0, 100.0])
    assert m.median == 3.0
    assert m.spread == 2.0  # quartiles 2 and 4
    assert m.to_dict()["min_s"] == 1.0
    assert m.to_dict()["repeats"] == 5


def test_measure_runs_warmup_and_repeats():
    calls = []
    m = measure(lambda: calls.append(1), warmup=2, repeats=3)
    assert len(calls) == 5
    assert len(m.samples) == 3 and all(s >= 0 for s in m.samples)
    with pytest.raises(BenchmarkError):
        measure(lambda: None, repeats=0)


def test_ratio_and_geometric_mean():
    assert ratio(2.0, 0.5) == 4.0
    assert geometric_mean([1.0, 4.0]) == pytest.approx(2.0)
    assert geometric_mean([2.0, 8.0, 4.0]) == pytest.approx(4.0)
    with pytest.raises(BenchmarkError):
        geometric_mean([1.0, 0.0])
    with pytest.raises(BenchmarkError):
        ratio(1.0, 0.0)


def test_threads_context_restores():
    before = torch.get_num_threads()
    with threads(1) as count:
        assert count == 1 == torch.get_num_threads()
    assert torch.get_num_threads() == before


def test_report_round_trip(tmp_path):
    report = BenchmarkReport("demo", rows=[{"method": "vanilla", "tokens_per_s": 9.5}], summary={"speedup": 1.0})
    path = report.write_json(tmp_path / "r.json")
    data = json.loads(path.read_text())
    assert data["schema"] == "crossedge.bench/1"
    assert data["environment"]["threads"] == torch.get_num_threads()
    back = BenchmarkReport.read_json(path)
    assert back.rows == report.rows and back.summary == report.summary


def test_malformed_report_is_refused(tmp_path):
    data = BenchmarkReport("demo").to_dict()
    del data["environment"]["threads"]
    with pytest.raises(BenchmarkError, match="environment.*threads"):
        validate_report(data)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(BenchmarkError, match="cannot read"):
        BenchmarkReport.read_json(bad)


def test_format_table_aligns_numbers_right():
    text = format_table([{"m": "a", "x": 1.5}, {"m": "bbb", "x": 10.25}], ["m", "x"])
    lines = text.splitlines()
    assert lines[0].split() == ["m", "x"]
    assert lines[2] == "a     1.5"
    assert lines[3] == "bbb  10.2"


def test_plot_writes_png(tmp_path):
    path = plot_bars(
        [{"m": "a", "v": 1.0}, {"m": "b", "v": 2.0}],
        label="m",
        value="v",
        path=tmp_path / "p.png",
        title="t",
        reference=1.0,
    )
    assert path.read_bytes()[:4] == b"\x89PNG"


class _EchoBenchmark:
    """A benchmark whose report holds the options it was given (registered per test)."""

    name = "echo"
    description = "returns its options"

    def run(self, *, repeats: int = 3, model: str = "tiny", fast: bool = False):
        from crossedge.core.bench import BenchmarkReport

        return BenchmarkReport(self.name, rows=[{"repeats": repeats, "model": model, "fast": fast}])


class _EchoPlugin:
    from crossedge.core import hookimpl

    @hookimpl
    def register_benchmarks(self, register):
        from crossedge.core.bench import Benchmark

        register(type("Echo", (_EchoBenchmark, Benchmark), {})())


def test_bench_run_binds_options_to_run_and_refuses_mistyped_keys(tmp_path):
    from click.testing import CliRunner

    from crossedge.core import registered
    from crossedge.core.cli import build_cli

    with registered(_EchoPlugin(), name="echo-test"):
        out = tmp_path / "echo.json"
        args = ["bench", "run", "echo", "-o", "repeats=5", "-o", "fast=yes", "--json", str(out)]
        ok = CliRunner().invoke(build_cli(), args)
        assert ok.exit_code == 0, ok.output
        # coerced to run()'s declared types: an integer and a boolean, not the text given
        assert json.loads(out.read_text())["rows"] == [{"repeats": 5, "model": "tiny", "fast": True}]
        typo = CliRunner().invoke(build_cli(), ["bench", "run", "echo", "-o", "repeat=5"])
        assert typo.exit_code == 1
        assert "has no option 'repeat'; did you mean 'repeats'? its options: fast, model, repeats" in typo.output
        bad = CliRunner().invoke(build_cli(), ["bench", "run", "echo", "-o", "repeats=many"])
        assert bad.exit_code == 1 and "option repeats takes an integer, got 'many'" in bad.output
