"""--quant through core: checked before any model loads, applied through the quantizer registry alone."""

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from click.testing import CliRunner

from crossedge.core import hookimpl, registered
from crossedge.core.cli import build_cli
from crossedge.core.compose import apply_quant, check_quant
from crossedge.core.contracts.quantizer import Quantizer, QuantizerConfig, QuantizeResult
from crossedge.core.errors import CrossedgeError
from crossedge.core.sources import load_model
from crossedge.core.specs import SpecError
from crossedge.core.testing import save_tiny_causal_lm


@dataclass(kw_only=True)
class RoundConfig(QuantizerConfig):
    method: ClassVar[str] = "round"
    decimals: int = 1


class RoundQuantizer(Quantizer):
    """Rounds every linear weight to a few decimals: a quantizer that needs nothing but core."""

    name = "round"
    config_class = RoundConfig

    def quantize(self, model, config, *, calibration=None, filter_fn=None):
        done = {}
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and name != "lm_head":
                module.weight.data = torch.round(module.weight.data, decimals=config.decimals)
                done[name] = "rounded"
        return QuantizeResult(model, config, done, {"layers": len(done)})


@dataclass(kw_only=True)
class CalibratedConfig(RoundConfig):
    method: ClassVar[str] = "calibrated"


class Calibrated(RoundQuantizer):
    name = "calibrated"
    config_class = CalibratedConfig
    needs_calibration = True


class QuantizerPlugin:
    @hookimpl
    def register_quantizers(self, register):
        register(RoundQuantizer)
        register(Calibrated)


@pytest.fixture
def plugin():
    with registered(QuantizerPlugin(), name="round-test"):
        yield


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_tiny_causal_lm(tmp_path_factory.mktemp("m") / "tiny", hidden=64)


def test_apply_quant_runs_the_registered_method(plugin, folder):
    loaded = load_model(str(folder))
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        before = loaded.model(ids).logits
    result = apply_quant(loaded, "round:decimals=0")
    assert result.model is loaded.model and result.details["layers"] == 14
    with torch.no_grad():
        assert not torch.equal(loaded.model(ids).logits, before)


def test_bad_quant_specs_are_refused_before_loading(plugin):
    with pytest.raises(SpecError, match="unknown quantizer 'rond'"):
        check_quant("rond", model="no-such-model")
    with pytest.raises(SpecError, match="takes an integer"):
        check_quant("round:decimals=x", model="no-such-model")
    with pytest.raises(CrossedgeError, match="needs calibration data.*crossedge quant run"):
        check_quant("calibrated", model="no-such-model")


def test_an_already_quantized_folder_is_refused(plugin, tmp_path):
    (tmp_path / "quantization.json").write_text("{}")
    with pytest.raises(CrossedgeError, match="already quantized"):
        check_quant("round", model=str(tmp_path))


def test_models_generate_quant(plugin, folder):
    runner = CliRunner()
    result = runner.invoke(build_cli(), ["models", "generate", "no-such-model", "hi", "--quant", "rond"])
    assert result.exit_code == 1 and "unknown quantizer 'rond'" in result.output  # the spec first, not the model
    args = ["models", "generate", str(folder), "hello", "--max-new-tokens", "8"]
    plain = runner.invoke(build_cli(), args)
    rounded = runner.invoke(build_cli(), [*args, "--quant", "round:decimals=0"])
    assert plain.exit_code == rounded.exit_code == 0, rounded.output
    assert plain.output != rounded.output  # the rounded weights were used


def test_stack_is_checked_before_loading_and_built_load_quantize_prepare(plugin, folder):
    from crossedge.core.backends import TorchEagerBackend
    from crossedge.core.compose import build_stack, check_stack
    from crossedge.core.testing import BackendPlugin

    seen = []

    class Recording(TorchEagerBackend):
        name = "recording"

        def prepare_causal_lm(self, model):
            # what the backend is handed: the model after quantization (weights rounded to whole numbers)
            weight = model.model.layers[0].mlp.up_proj.weight
            seen.append(bool(torch.equal(weight, torch.round(weight))))
            return model

    class NoKernels(TorchEagerBackend):
        name = "no-kernels"
        custom_kernels = False

    with registered(BackendPlugin(Recording, NoKernels), name="stack-test"):
        with pytest.raises(CrossedgeError, match="does not support modules with custom"):
            check_stack("no-such-model", quant="round", backend="no-kernels", purpose="test")
        assert check_stack("no-such-model", backend="no-kernels", purpose="test").quant is None
        plan = check_stack(str(folder), quant="round:decimals=0", backend="recording", purpose="test")
        assert plan.describe()["quant"] == "round:decimals=0" and plan.describe()["backend"] == "recording"
        built = build_stack(plan)
    assert seen == [True] and built.quantized.details["layers"] == 14
