"""The ondevice commands and the constrained search, on small settings."""

import json

import pytest
from click.testing import CliRunner

from crossedge.core import CrossedgeError
from crossedge.core.cli import build_cli
from crossedge.ondevice.elastic import ElasticMobileNet
from crossedge.ondevice.latency import DeviceConfig, LatencyTable, MetaLatencyPredictor, synthetic_latencies
from crossedge.ondevice.search import distinct_subnets, search


@pytest.fixture
def cli(ondevice_plugin):
    runner = CliRunner()
    return lambda *args: runner.invoke(build_cli(), list(args))


def test_backends_command_lists_capabilities(cli):
    result = cli("ondevice", "backends", "--json")
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.output)}
    assert rows["torch-eager"]["training"] is True and rows["onnxruntime"]["dtypes"] == "float32"


def test_profile_command_writes_json(cli, tmp_path):
    out = tmp_path / "profile.json"
    result = cli("ondevice", "profile", "--model", "mbv2-digits-0.5", "--repeats", "3", "--json", str(out))
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["max_abs_diff"] == 0.0 and data["backend"] == "torch-eager"
    assert data["latency_p90_ms"] >= data["latency_median_ms"] > 0
    assert data["macs"] > 0 and data["parameters"] > 0 and data["threads"] >= 1
    assert sum(r["macs"] for r in data["layers"] if r["layer"].count(".") == 0) <= data["macs"]
    assert any(r["layer"] == "features.1" and r["macs"] > 0 for r in data["layers"])


def test_finetune_sparse_without_budget_is_one_red_line(cli):
    result = cli("ondevice", "finetune", "--method", "sparse", "--epochs", "1", "--width", "0.5")
    assert result.exit_code == 1
    assert "--budget-kb" in result.output


def test_unknown_backend_gets_a_suggestion(cli):
    result = cli("ondevice", "profile", "--backend", "onnxrt", "--repeats", "1")
    assert result.exit_code == 1 and "onnxruntime" in result.output


def test_search_respects_the_limits_and_measures_the_winner():
    net = ElasticMobileNet().eval()
    subnets = distinct_subnets(net.space, 40)
    source = LatencyTable(net.space, subnets, list(range(10)))
    for i, values in enumerate(synthetic_latencies(net.space, subnets, 3, seed=2)):
        source.values[f"synthetic-{i}"] = values
    predictor = MetaLatencyPredictor(net.space, subnets[:10])
    predictor.meta_train(subnets, source.values, episodes=50)
    device = DeviceConfig("torch-eager", 1, "float32")
    limits = {"device": device, "supernet": net, "source_table": source, "predictor": predictor}
    result = search(latency_ms=1e4, memory_kb=400, candidates=12, evaluate_top=3, **limits)
    assert result.memory_kb <= 400 and result.predicted_ms <= 1e4
    assert result.measured_ms > 0 and 1 <= result.feasible <= 12
    assert len(result.table) <= 3
    with pytest.raises(CrossedgeError, match="relax"):
        search(latency_ms=1e-6, memory_kb=400, candidates=5, **limits)


def test_peak_activation_matches_a_hand_computed_case():
    import torch
    from torch import nn

    from crossedge.ondevice.profiling import peak_activation_bytes

    model = nn.Sequential(nn.Linear(100, 1000), nn.ReLU(), nn.Linear(1000, 10))
    # Linear's output and ReLU's output (64 x 1000 fp32 each) are alive together, nothing more.
    assert peak_activation_bytes(model, (torch.randn(64, 100),)) == 2 * 64 * 1000 * 4


def test_finetune_command_prints_accuracy_memory_and_time(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("CROSSEDGE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "finetune.json"
    args = ["ondevice", "finetune", "--method", "mobiletl", "--blocks", "1", "--epochs", "1", "--width", "0.5"]
    result = cli(*args, "--json", str(out))
    assert result.exit_code == 0, result.output
    for label in ("accuracy", "training memory", "saved for bwd", "optimizer state", "time"):
        assert label in result.output
    data = json.loads(out.read_text())
    assert data["method"] == "mobiletl" and data["memory_saved_activation_bytes"] > 0
    assert list((tmp_path / "cache" / "ondevice").glob("*.safetensors"))  # the pre-trained network is cached
