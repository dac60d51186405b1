"""Integration: installed distributions are discovered through their entry points."""

import json

import pytest

from crossedge.core.testing import run_cli


def test_example_plugin_is_found_by_entry_point():
    done = run_cli("plugins", "--json")
    assert done.returncode == 0, done.stderr
    rows = {r["name"]: r for r in json.loads(done.stdout)}
    example = rows["tiny_models"]
    assert example["distribution"] == "crossedge-tiny-models"
    assert example["version"] == "0.1.0"
    assert example["hooks"] == ["register_model_sources"]
    assert example["registers"] == {"model_source": ["tiny-gpt2", "tiny-llama"]}
    assert rows["crossedge.core.builtins.model_sources"]["builtin"] is True


def test_load_plugins_env_hides_the_example_plugin():
    done = run_cli("plugins", "--json", env={"CROSSEDGE_LOAD_PLUGINS": ""})
    names = {r["name"] for r in json.loads(done.stdout)}
    assert "tiny_models" not in names
    assert "crossedge.core.builtins.commands" in names
    assert {"specdec", "quant", "ondevice", "retrieval", "sensing", "crossmodal"} <= names  # first party stays on


def test_load_plugins_env_with_a_typo_warns_with_the_close_match():
    done = run_cli("plugins", "--json", env={"CROSSEDGE_LOAD_PLUGINS": "tiny_model"})
    assert done.returncode == 0, done.stderr
    assert "'tiny_model'" in done.stderr and "did you mean 'tiny_models'" in done.stderr
    assert "specdec" in {r["name"] for r in json.loads(done.stdout)}


def test_pull_and_info_of_a_plugin_model(tmp_path):
    done = run_cli("models", "pull", "tiny-llama", cache=tmp_path)
    assert done.returncode == 0, done.stderr
    info = json.loads(run_cli("models", "info", "tiny-llama", "--json", "--verify", cache=tmp_path).stdout)
    assert info["pulled"] is True and info["verified"] is True
    assert info["origin"] == {"arch": "llama", "generator": "crossedge_tiny_models", "seed": 0}
    assert info["layers"] == 2


def test_corrupted_cache_is_reported_by_verify(tmp_path):
    run_cli("models", "pull", "tiny-gpt2", cache=tmp_path)
    weights = tmp_path / "models" / "tiny-gpt2" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    done = run_cli("models", "info", "tiny-gpt2", "--verify", cache=tmp_path)
    assert done.returncode == 1
    assert "does not match its recorded SHA-256" in done.stderr
    done = run_cli("models", "pull", "tiny-gpt2", cache=tmp_path)
    assert done.returncode == 0
    assert "damaged" in done.stderr
    assert run_cli("models", "info", "tiny-gpt2", "--verify", cache=tmp_path).returncode == 0


@pytest.mark.model
def test_smollm2_info_from_the_real_cache_offline():
    assert run_cli("models", "pull", "smollm2-135m").returncode == 0
    done = run_cli("models", "info", "smollm2-135m", "--json", env={"HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["layers"] == 30
