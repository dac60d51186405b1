"""The crossedge sensing commands: datasets, bench (table, JSON, plot), sweep then collect, clear errors."""

import json

import pytest
from click.testing import CliRunner

from crossedge.core.cli import build_cli

QUICK = ["--steps", "8", "--batch-size", "8", "--checkpoint-every", "4"]


@pytest.fixture
def cli(plugin):
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(build_cli(), list(args), catch_exceptions=False)

    return invoke


def test_datasets_lists_array_datasets_and_shows_windows_per_domain(cli):
    result = cli("sensing", "datasets", "--json")
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert "synthetic-shift" in rows and "pydoc-topics" not in rows  # text corpora are not windows
    result = cli("sensing", "datasets", "synthetic-shift", "--build", "--json")
    facts = json.loads(result.stdout)
    assert facts["built"] and facts["windows_per_domain"]["subject"] == {"s0": 48, "s1": 48, "s2": 48, "s3": 48}
    assert sum(facts["windows_per_label"].values()) == facts["n"]


def test_bench_prints_both_protocols_and_writes_json_and_a_plot(cli, tmp_path):
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    result = cli(
        "sensing", "bench", "--dataset", "synthetic-shift", "--scenario", "cross-person",
        "--algorithms", "erm,erm:width=16", "--seeds", "2", "--test-domains", "s0,s1",
        "--json", str(out), "--plot", str(png), *QUICK,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "training-domain" in result.stdout and "test-domain" in result.stdout
    payload = json.loads(out.read_text())
    (experiment,) = payload["experiments"]
    assert experiment["algorithms"] == ["erm", "erm:width=16"] and experiment["test_domains"] == ["s0", "s1"]
    cell = experiment["results"]["erm"]["training-domain"]
    assert cell["seeds"] == 2 and cell["domains"] == 2 and 0.0 <= cell["mean"] <= 1.0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sweep_resumes_its_records_and_collect_reads_them_alone(cli, tmp_path):
    records = tmp_path / "sweep.jsonl"
    args = ["sensing", "sweep", "--dataset", "synthetic-shift", "--algorithms", "erm", "--seeds", "1",
            "--hparams-seeds", "2", "--test-domains", "s3", "--records", str(records), *QUICK]  # fmt: skip
    first = cli(*args)
    assert first.exit_code == 0 and "2 jobs run, 0 already recorded" in first.stdout
    assert "0 jobs run, 2 already recorded" in cli(*args).stdout
    result = cli("sensing", "collect", str(records), "--json", "-", "--per-domain")
    assert result.exit_code == 0, result.output
    text = result.stdout
    payload = json.loads(text[text.index("{") : text.rindex("}") + 1])
    assert payload["experiments"][0]["results"]["erm"]["test-domain"]["seeds"] == 1
    assert "training-domain selection, per test domain" in text


def test_mistakes_are_one_line_errors(plugin):
    runner = CliRunner()
    result = runner.invoke(build_cli(), ["sensing", "bench", "--dataset", "no-such-data", *QUICK])
    assert result.exit_code == 1 and "no dataset or path 'no-such-data'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    result = runner.invoke(build_cli(), ["sensing", "bench", "--dataset", "synthetic-shift", "--algorithms", "emr"])
    assert result.exit_code == 1 and "unknown algorithm 'emr'" in result.stderr
    args = ["sensing", "bench", "--dataset", "synthetic-shift", "--scenario", "cross-room"]
    result = runner.invoke(build_cli(), args)
    assert result.exit_code == 1 and "random-split" in result.stderr
    result = runner.invoke(build_cli(), ["sensing", "sweep", "--dataset", "synthetic-shift"])
    assert result.exit_code == 2 and "--records" in result.stderr


def test_the_same_bench_command_runs_on_a_uci_har_folder_and_on_a_labelled_csi_csv(cli, tmp_path):
    import numpy as np
    from test_formats import write_csv, write_uci

    uci = tmp_path / "UCI HAR Dataset"
    write_uci(uci)
    csv = tmp_path / "csi.csv"
    plan = [(person, label, 300) for person in ("p1", "p2", "p3") for label in ("push", "swipe")]
    write_csv(csv, rate=100, plan=plan, rng=np.random.default_rng(1))
    common = ["--scenario", "cross-person", "--algorithms", "erm,coral", "--seeds", "1", "--json", "-", *QUICK]
    for dataset, options in ((uci, []), (csv, ["--feature-columns", "csi_*", "--group-column", "subject"])):
        result = cli("sensing", "bench", "--dataset", str(dataset), *options, *common)
        assert result.exit_code == 0, result.output
        text = result.stdout
        (experiment,) = json.loads(text[text.index("{") : text.rindex("}") + 1])["experiments"]
        assert experiment["algorithms"] == ["erm", "coral"]
        assert len(experiment["test_domains"]) == 3  # three persons in either fixture


def test_portability_and_pretrain_commands_print_their_tables(cli, tmp_path):
    from crossedge.core.registry import get_registry
    from crossedge.sensing.datasets.em_traces import EMTraces

    small = EMTraces("em-traces-small", devices=3, traces=120)
    from crossedge.core import hookimpl, registered

    class Small:
        @hookimpl
        def register_datasets(self, register):
            register(small)

    with registered(Small(), name="small-traces"):
        assert "em-traces-small" in get_registry("dataset")
        out = tmp_path / "portability.json"
        result = cli("sensing", "portability", "--dataset", "em-traces-small", "--shots", "10", "--steps", "20",
                     "--seeds", "1", "--json", str(out))  # fmt: skip
        assert result.exit_code == 0, result.output
        payload = json.loads(out.read_text())
        conditions = ["same-device", "direct", "mixed", "transfer", "target-only"]
        assert [r["condition"] for r in payload["rows"]] == conditions
        assert all(0.0 <= r["mean"] <= 1.0 for r in payload["rows"])
        result = cli("sensing", "pretrain", "--dataset", "synthetic-shift", "--fractions", "0.1", "--seeds", "1",
                     "--pretrain-steps", "3", "--steps", "3", "--json", "-")  # fmt: skip
        assert result.exit_code == 0, result.output
        assert "linear-probe" in result.stdout and "scratch" in result.stdout
