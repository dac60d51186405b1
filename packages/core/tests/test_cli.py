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


def test_bench_run_uses_a_benchmarks_own_figure(cli, tmp_path):
    from crossedge.core.bench import Benchmark, BenchmarkReport, plot_bars

    class Front(Benchmark):
        name = "front"

        def run(self):
            return BenchmarkReport(benchmark=self.name, rows=[{"width": 0.5, "accuracy": 0.9}])

        def plot(self, report, path):
            return plot_bars(
                report.rows, label="width", value="accuracy", path=path.with_name("front-own.png"), title="t"
            )

    class Plugin:
        @hookimpl
        def register_benchmarks(self, register):
            register(Front())

    out = tmp_path / "r.json"
    with registered(Plugin(), name="front-plugin"):
        result = cli("bench", "run", "front", "--json", str(out))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "front-own.png").read_bytes()[:4] == b"\x89PNG"
    assert not out.with_suffix(".png").exists()
    assert "front-own.png" in result.stdout


def test_bench_option_must_be_key_value(cli):
    result = cli("bench", "run", "model-load", "-o", "oops")
    assert result.exit_code == 1
    assert "is not KEY=VALUE" in result.stderr


def test_crossedge_warnings_print_as_one_line(capsys):
    from crossedge.core.cli import _show_warning
    from crossedge.core.plugins import PluginLoadWarning

    _show_warning(PluginLoadWarning("skipping crossedge plugin 'x'"), PluginLoadWarning, "f.py", 1)
    assert capsys.readouterr().err == "Warning: skipping crossedge plugin 'x'\n"


class CopyDrafterPlugin:
    @hookimpl
    def register_drafters(self, register):
        register(type("Copy", (), {"name": "copy"}))


def test_duplicate_name_does_not_break_the_diagnostic_commands(cli, cache):
    with registered(CopyDrafterPlugin(), name="first-copy"), registered(CopyDrafterPlugin(), name="second-copy"):
        as_json = cli("plugins", "--json")
        as_text = cli("plugins")
        doctor = cli("doctor", "--json")
    assert as_json.exit_code == 0, as_json.output
    rows = {r["name"]: r for r in json.loads(as_json.stdout)}
    for name in ("first-copy", "second-copy"):
        [message] = rows[name]["conflicts"]
        assert "drafter name 'copy'" in message and "first-copy" in message and "second-copy" in message
    assert as_text.exit_code == 0 and "CONFLICT: drafter name 'copy'" in as_text.stdout
    assert doctor.exit_code == 0, doctor.output
    assert any("second-copy" in c for c in json.loads(doctor.stdout)["plugin_conflicts"])


def test_cpu_flags_are_read_from_cpuinfo():
    from crossedge.core.bench import cpu_flags, environment

    cpuinfo = "processor\t: 0\nflags\t\t: fpu sse avx2 fma avx512f avx512_vnni avx512_bf16 amx_tile amx_int8\n"
    assert cpu_flags(cpuinfo) == ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8"]
    assert cpu_flags("processor\t: 0\n") == []
    assert isinstance(environment()["cpu_flags"], list)


def test_doctor_shows_cpu_flags(cli, cache, monkeypatch):
    from crossedge.core.builtins import commands

    monkeypatch.setattr(commands, "cpu_flags", lambda cpuinfo=None: ["avx2", "amx_tile"])
    result = cli("doctor")
    assert result.exit_code == 0, result.output
    assert "cpu_flags: avx2, amx_tile" in result.stdout


def test_cache_env_pointing_at_a_file_is_one_line(cli, tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("CROSSEDGE_CACHE", str(blocker / "sub"))
    result = cli("models", "pull", "smollm2-135m")
    assert result.exit_code == 1
    error = result.stderr.splitlines()[-1]
    assert error.startswith("Error: CROSSEDGE_CACHE=") and "is a file, not a folder" in error
    doctor = cli("doctor", "--json")
    assert doctor.exit_code == 0 and json.loads(doctor.stdout)["cache_dir"].startswith("unusable")


def test_models_info_of_a_plain_folder_is_not_pulled(cli, tmp_path):
    from crossedge.core.testing import save_tiny_causal_lm

    save_tiny_causal_lm(tmp_path / "mine")
    (tmp_path / "empty").mkdir()
    model = json.loads(cli("models", "info", str(tmp_path / "mine"), "--json").stdout)
    assert model["pulled"] is False and model["what"].startswith("local model folder, used in place")
    empty = json.loads(cli("models", "info", str(tmp_path / "empty"), "--json").stdout)
    assert empty["pulled"] is False and "no config.json" in empty["what"]


def test_models_info_of_a_truncated_local_safetensors_is_one_line(cli, tmp_path):
    from crossedge.core.testing import save_tiny_causal_lm

    folder = tmp_path / "cut"
    save_tiny_causal_lm(folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:40])
    result = cli("models", "info", str(folder))
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: could not read the model files in") and len(result.stderr.splitlines()) == 1
