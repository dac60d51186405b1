"""``crossedge bench run retrieval``: registered, small by default, options mapped to the bench settings."""

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from crossedge.retrieval.testing import tiny_bench_settings


def test_bench_list_shows_retrieval(plugin):
    from crossedge.core.cli import build_cli

    result = CliRunner().invoke(build_cli(), ["bench", "list"], catch_exceptions=False)
    assert result.exit_code == 0 and "retrieval" in result.output


def test_bench_run_maps_options_to_the_bench(tmp_path, cache, plugin):
    from crossedge.core.bench import BenchmarkReport
    from crossedge.core.cli import build_cli

    settings = tiny_bench_settings(tmp_path)
    out = tmp_path / "report.json"
    args = ["bench", "run", "retrieval", "-o", f"collection={settings.collection}", "-o", f"model={settings.model}"]
    args += ["-o", "methods=bm25,bi-zero-shot", "-o", "limit-queries=2", "-o", "corpus_limit=none", "--json", str(out)]
    result = CliRunner().invoke(build_cli(), args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = BenchmarkReport.read_json(out)
    assert [row["method"] for row in report.rows] == ["bm25", "bi-encoder zero-shot"]
    assert report.summary["queries"] == 2 and report.summary["settings"]["corpus_limit"] is None
    assert report.summary["settings"]["methods"] == ["bm25", "bi-zero-shot"]


def test_defaults_are_small():
    from crossedge.retrieval.benchmark import settings_from_options
    from crossedge.retrieval.pipeline import BenchSettings

    small, full = settings_from_options(), BenchSettings()
    assert set(small.methods) < set(full.methods)
    assert small.limit_queries < full.limit_queries and small.corpus_limit is not None
    assert settings_from_options(methods="all").methods == full.methods


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"method": "bm25"}, "unknown retrieval benchmark option 'method'; valid: collection"),
        ({"limit_queries": "many"}, "limit_queries='many' takes an integer"),
        ({"progress": "perhaps"}, "takes true or false"),
    ],
)
def test_bad_options_are_clear_errors(options, message):
    from crossedge.core import CrossedgeError
    from crossedge.retrieval.benchmark import settings_from_options

    with pytest.raises(CrossedgeError, match=message):
        settings_from_options(**options)


def test_plugin_and_cli_modules_import_no_torch():
    code = "import sys, crossedge.retrieval.plugin, crossedge.retrieval.cli; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout.strip().lower()) is False


def test_a_bad_thread_count_is_a_clear_error():
    from crossedge.core import CrossedgeError
    from crossedge.retrieval.benchmark import RetrievalBenchmark

    with pytest.raises(CrossedgeError, match="threads='many' takes an integer"):
        RetrievalBenchmark().run(threads="many")
