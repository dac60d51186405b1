"""The crossedge command line: built-in commands, errors, plugin commands."""

import json

import click
import pytest

from crossedge.core import hookimpl, registered


def test_plugins_json_lists_builtins_with_their_names(cli):
    result = cli("plugins", "--json")
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    sources = rows["crossedge.core.builtins.model_sources"]
    assert sources["distribution"] == "crossedge-core"
    assert sources["hooks"] == ["register_model_sources"]
    assert sources["registers"]["model_source"] == ["gemma3-270m", "minilm-l6", "smollm2-135m"]


def test_models_list_json(cli, cache):
    result = cli("models", "list", "--json")
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["smollm2-135m"]["task"] == "causal-lm"
    assert rows["minilm-l6"]["task"] == "sentence-encoder"
    assert rows["smollm2-135m"]["pulled"] is False


def test_unknown_model_is_one_red_line_and_exit_1(cli):
    result = cli("models", "info", "smollm2-13m")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.strip() == "Error: unknown model 'smollm2-13m': did you mean 'smollm2-135m'?"


def test_debug_flag_shows_the_exception(cli):
    result = cli("--debug", "models", "info", "smollm2-13m")
    assert result.exit_code == 1
    assert type(result.exception).__name__ == "UnknownNameError"


def test_info_of_unpulled_model_fetches_nothing(cli, cache):
    result = cli("models", "info", "minilm-l6", "--json")
    assert result.exit_code == 0, result.output
    facts = json.loads(result.stdout)
    assert facts["pulled"] is False
    assert not cache.exists() or not any(cache.rglob("*.whl"))


def test_doctor_reports_threads_and_cache(cli, cache):
    result = cli("doctor", "--json")
    assert result.exit_code == 0, result.output
    facts = json.loads(result.stdout)
    assert facts["torch_threads"] >= 1
    assert facts["cache_dir"] == str(cache)
    assert "crossedge-core" in facts["packages"]


class CommandPlugin:
    @hookimpl
    def register_commands(self, cli):
        @cli.command(name="hello")
        @click.argument("who")
        def hello(who):
            """Say hello."""
            click.echo(f"hello {who}")


def test_plugins_contribute_commands(cli):
    with registered(CommandPlugin(), name="hello-plugin"):
        result = cli("hello", "world")
    assert result.exit_code == 0
    assert result.stdout == "hello world\n"


class BrokenCommandPlugin:
    @hookimpl
    def register_commands(self, cli):
        raise ValueError("cannot build my commands")


def test_broken_command_plugin_leaves_the_cli_working(cli):
    from crossedge.core.plugins import PluginLoadWarning

    with registered(BrokenCommandPlugin(), name="broken-commands"), pytest.warns(PluginLoadWarning):
        result = cli("models", "list")
    assert result.exit_code == 0


def test_bench_run_writes_report_and_plot(cli, tmp_path):
    from crossedge.core.bench import Benchmark, BenchmarkReport

    class Constant(Benchmark):
        name = "constant"

        def run(self, scale=1, **_):
            rows = [{"step": "a", "median_s": 0.5 * scale}, {"step": "b", "median_s": 0.25 * scale}]
            return BenchmarkReport(benchmark=self.name, rows=rows, summary={"scale": scale})

    class Plugin:
        @hookimpl
        def register_benchmarks(self, register):
            register(Constant())

    out = tmp_path / "r.json"
    with registered(Plugin(), name="bench-plugin"):
        result = cli("bench", "run", "constant", "-o", "scale=2", "--json", str(out))
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["schema"] == "crossedge.bench/1"
    assert data["summary"] == {"scale": 2}
    assert [r["median_s"] for r in data["rows"]] == [1.0, 0.5]
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


def test_bench_option_must_be_key_value(cli):
    result = cli("bench", "run", "model-load", "-o", "oops")
    assert result.exit_code == 1
    assert "is not KEY=VALUE" in result.stderr


def test_crossedge_warnings_print_as_one_line(capsys):
    from crossedge.core.cli import _show_warning
    from crossedge.core.plugins import PluginLoadWarning

    _show_warning(PluginLoadWarning("skipping crossedge plugin 'x'"), PluginLoadWarning, "f.py", 1)
    assert capsys.readouterr().err == "Warning: skipping crossedge plugin 'x'\n"
