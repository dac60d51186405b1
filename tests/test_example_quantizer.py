"""Integration: the example quantizer plugin is found through its entry point, and its folders load anywhere.

Each check runs the crossedge CLI or Python in a fresh process with entry points loaded
as a user's would be: the method's spec is parsed only after plugins load, and a folder it
wrote loads through core's load_model with the logits of the in-process quantized model.
"""

import copy
import importlib.metadata
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("crossedge_example_quantizer")


def _fresh(args, tmp_path, *, python=False):
    env = {k: v for k, v in os.environ.items() if k != "CROSSEDGE_LOAD_PLUGINS"}
    env["CROSSEDGE_CACHE"] = str(tmp_path / "cache")
    command = (
        [sys.executable, "-c", args]
        if python
        else [sys.executable, "-c", "from crossedge.core.cli import main; main()", *args]
    )
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)


def test_entry_point_is_declared():
    names = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="crossedge")}
    assert names.get("example_quantizer") == "crossedge_example_quantizer"


def test_a_folder_it_wrote_loads_in_a_fresh_process(tmp_path):
    import crossedge_example_quantizer as plugin
    from safetensors.torch import load_file

    from crossedge.core.testing import save_tiny_causal_lm, tiny_causal_lm

    source = save_tiny_causal_lm(tmp_path / "fp32", hidden=64)
    out = tmp_path / "absmax8"
    listed = _fresh(["quant", "methods", "--json"], tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert '"absmax8"' in listed.stdout
    # the third-party spec is parsed in a process that found the method only through its entry point
    run = _fresh(
        ["quant", "run", "--model", str(source), "--method", "absmax8:per_row=true", "--out", str(out)], tmp_path
    )
    assert run.returncode == 0, run.stderr
    logits_file = tmp_path / "logits.safetensors"
    script = (
        "import torch; from safetensors.torch import save_file; from crossedge.core.sources import load_model; "
        f"loaded = load_model({str(out)!r}); "
        "ids = torch.arange(1, 40).unsqueeze(0); "
        f"save_file({{'logits': loaded.model(ids).logits.detach().contiguous()}}, {str(logits_file)!r})"
    )
    loaded = _fresh(script, tmp_path, python=True)
    assert loaded.returncode == 0, loaded.stderr
    model, _ = tiny_causal_lm("llama", seed=0, hidden=64)
    result = plugin.Absmax8Quantizer().quantize(copy.deepcopy(model), plugin.Absmax8Config())
    with torch.no_grad():
        expected = result.model(torch.arange(1, 40).unsqueeze(0)).logits
    assert torch.equal(load_file(str(logits_file))["logits"], expected)
