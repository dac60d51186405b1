"""Conformance suite for benchmarks: subclass :class:`BenchmarkConformance` and give two fixtures.

::

    class TestMyBenchmark(BenchmarkConformance):
        @pytest.fixture
        def benchmark(self):
            return MyBenchmark()

        @pytest.fixture
        def options(self):
            return {"repeats": "1"}  # small, so a run takes seconds

Options go through :func:`crossedge.core.bench.bind_options`, as ``-o key=value`` does.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from crossedge.core.bench import Benchmark, BenchmarkReport, bind_options, validate_report
from crossedge.core.errors import CrossedgeError


class BenchmarkConformance:
    """Checks every benchmark passes: a name, a report that validates and round-trips, unknown options refused."""

    #: An option key no benchmark takes.
    unknown_option: str = "no_such_option_for_conformance"

    @pytest.fixture
    def benchmark(self) -> Benchmark:
        """The benchmark under test; a subclass must override this fixture."""
        raise NotImplementedError("a BenchmarkConformance subclass defines a `benchmark` fixture")

    @pytest.fixture
    def options(self) -> dict[str, Any]:
        """Options that make a run take seconds; override for a benchmark whose defaults are slow."""
        return {}

    def run(self, benchmark: Benchmark, options: dict[str, Any]) -> BenchmarkReport:
        """Bind ``options`` as the CLI does and run the benchmark."""
        return benchmark.run(**bind_options(benchmark, options))

    def test_is_a_benchmark_with_a_name_and_description(self, benchmark):
        assert isinstance(benchmark, Benchmark), f"{type(benchmark).__name__} does not subclass crossedge's Benchmark"
        assert isinstance(benchmark.name, str) and benchmark.name, "set `name`"
        assert isinstance(benchmark.description, str) and benchmark.description, "set `description`"

    def test_run_gives_a_report_that_round_trips_through_json(self, benchmark, options, tmp_path):
        report = self.run(benchmark, options)
        assert isinstance(report, BenchmarkReport), f"run() returned {type(report).__name__}, not a BenchmarkReport"
        assert report.benchmark == benchmark.name
        assert report.rows, "the report has no rows"
        validate_report(json.loads(json.dumps(report.to_dict(), default=str)))
        path = report.write_json(tmp_path / "report.json")
        again = BenchmarkReport.read_json(path)
        assert again.to_dict() == json.loads(path.read_text())
        assert again.write_json(tmp_path / "again.json").read_text() == path.read_text()

    def test_an_unknown_option_is_refused_with_a_crossedge_error(self, benchmark, options):
        with pytest.raises(CrossedgeError):
            self.run(benchmark, {**options, self.unknown_option: "1"})
