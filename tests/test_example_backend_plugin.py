"""Integration: the example backend distribution is found through its entry point and serves --backend."""

import json
import os
import subprocess
import sys


def crossedge(*args):
    env = {k: v for k, v in os.environ.items() if k != "CROSSEDGE_LOAD_PLUGINS"}
    return subprocess.run([sys.executable, "-m", "crossedge.core.cli", *args], capture_output=True, text=True, env=env)


def test_example_backend_is_found_by_entry_point():
    done = crossedge("plugins", "--json")
    assert done.returncode == 0, done.stderr
    rows = {r["name"]: r for r in json.loads(done.stdout)}
    example = rows["example_backend"]
    assert example["distribution"] == "crossedge-example-backend"
    assert example["hooks"] == ["register_backends"]
    assert example["registers"] == {"backend": ["torch-export"]}


def test_example_backend_is_refused_for_decoding_before_any_model_loads():
    # The model does not exist: a refusal naming the backend proves the entry point was used first.
    done = crossedge("specdec", "generate", "--model", "no-such-model", "--backend", "torch-export:strict=true", "hi")
    assert done.returncode == 1
    assert "backend 'torch-export' cannot be used for specdec generate" in done.stderr
    assert "use --backend torch-eager" in done.stderr


def test_an_unknown_backend_lists_the_example_one():
    done = crossedge("specdec", "generate", "--model", "no-such-model", "--backend", "torch-exprot", "hi")
    assert done.returncode == 1
    assert "did you mean 'torch-export'" in done.stderr and "torch-export" in done.stderr.split("Registered")[1]
