"""Integration: the example backend distribution is found through its entry point and serves --backend."""

import json

from crossedge.core.testing import run_cli


def test_example_backend_is_found_by_entry_point():
    done = run_cli("plugins", "--json")
    assert done.returncode == 0, done.stderr
    rows = {r["name"]: r for r in json.loads(done.stdout)}
    example = rows["example_backend"]
    assert example["distribution"] == "crossedge-example-backend"
    assert example["hooks"] == ["register_backends"]
    assert example["registers"] == {"backend": ["torch-export"]}


def test_example_backend_is_refused_for_decoding_before_any_model_loads():
    # The model does not exist: a refusal naming the backend proves the entry point was used first.
    done = run_cli("specdec", "generate", "--model", "no-such-model", "--backend", "torch-export:strict=true", "hi")
    assert done.returncode == 1
    assert "backend 'torch-export' cannot be used for specdec generate" in done.stderr
    assert "use --backend torch-eager" in done.stderr


def test_an_unknown_backend_lists_the_example_one():
    done = run_cli("specdec", "generate", "--model", "no-such-model", "--backend", "torch-exprot", "hi")
    assert done.returncode == 1
    assert "did you mean 'torch-export'" in done.stderr and "torch-export" in done.stderr.split("Registered")[1]
