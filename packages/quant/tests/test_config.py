import json

import pytest

from crossedge.core.specs import SpecError
from crossedge.quant import (
    CONFIG_VERSION,
    CrossQuantConfig,
    GPTQConfig,
    MixedConfig,
    QuantConfig,
    QuantConfigError,
    RTNConfig,
    SmoothQuantConfig,
    W8A8Config,
    config_from_dict,
    parse_spec,
)
from crossedge.quant.config import spec_label

ALL = [
    RTNConfig(bits=4, group_size=64, skip=["*.mlp.*"]),
    RTNConfig(),
    W8A8Config(act_granularity="per_tensor"),
    SmoothQuantConfig(alpha=0.7),
    CrossQuantConfig(alpha=0.2),
    GPTQConfig(act_order=True, keep_lm_head=False),
    MixedConfig(bit_choices=[8, 4], budget_bytes=1000),
]


@pytest.mark.parametrize("config", ALL, ids=lambda c: c.method)
def test_dict_and_json_round_trip(quant_plugin, config):
    data = config.to_dict()
    assert data["method"] == config.method and data["version"] == CONFIG_VERSION
    again = config_from_dict(json.loads(json.dumps(data)))
    assert type(again) is type(config) and again == config
    assert QuantConfig.from_dict(data) == config


def test_unknown_version_is_refused_clearly(quant_plugin):
    data = RTNConfig().to_dict()
    data["version"] = 99
    with pytest.raises(QuantConfigError, match="version 99 is not supported.*upgrade"):
        config_from_dict(data)
    with pytest.raises(QuantConfigError, match="no 'version' field"):
        config_from_dict({"method": "rtn"})


def test_unknown_field_and_method_are_refused(quant_plugin):
    with pytest.raises(QuantConfigError, match="no option.*colour"):
        config_from_dict({**RTNConfig().to_dict(), "colour": "red"})
    with pytest.raises(QuantConfigError, match="unknown quantizer 'magic'"):
        config_from_dict({"method": "magic", "version": CONFIG_VERSION})
    with pytest.raises(QuantConfigError, match="not a GPTQConfig"):
        GPTQConfig.from_dict(RTNConfig().to_dict())


def test_validation_messages():
    with pytest.raises(QuantConfigError, match="group_size must be one of"):
        RTNConfig(bits=4, group_size=48)
    with pytest.raises(QuantConfigError, match="per_group"):
        RTNConfig(bits=4, granularity="per_channel")
    with pytest.raises(QuantConfigError, match="bits must be 4 or 8"):
        RTNConfig(bits=3)
    with pytest.raises(QuantConfigError, match="alpha"):
        SmoothQuantConfig(alpha=1.5)


def test_auto_defaults_follow_width():
    assert RTNConfig().granularity == "per_channel" and RTNConfig().symmetric is True
    four = RTNConfig(bits=4)
    assert four.granularity == "per_group" and four.symmetric is False


def test_parse_spec(quant_plugin):
    config = parse_spec("gptq:bits=4,group_size=64,act_order=true,skip=*.0.*|lm_head")
    assert isinstance(config, GPTQConfig)
    assert (config.bits, config.group_size, config.act_order) == (4, 64, True)
    assert config.skip == ["*.0.*", "lm_head"]
    assert parse_spec("mixed:bit_choices=4+8,budget_fraction=0.25").bit_choices == [4, 8]
    assert spec_label(parse_spec("smoothquant:alpha=0.8")) == "smoothquant:alpha=0.8"
    assert spec_label(parse_spec("rtn")) == "rtn"
    assert parse_spec("rtn:skip=*.0.*+lm_head").skip == ["*.0.*", "lm_head"]
    assert parse_spec("rtn:symmetric=none").symmetric is True  # None means "follow the width"
    with pytest.raises(SpecError, match="character 1: unknown quantizer 'nope'"):
        parse_spec("nope:bits=4")
    with pytest.raises(SpecError, match="option 'bits' needs a value"):
        parse_spec("rtn:bits")
    with pytest.raises(SpecError, match="character 10: option bits takes an integer, got 'abc'"):
        parse_spec("rtn:bits=abc")
    with pytest.raises(SpecError, match="character 5: quantizer 'rtn' has no option 'colour'; its options: .*group_"):
        parse_spec("rtn:colour=red")
    with pytest.raises(SpecError, match="character 10: weight bits must be 4 or 8"):
        parse_spec("rtn:bits=3")


def test_configs_need_the_registry_and_nothing_else(quant_plugin):
    from crossedge.core.registry import get_registry

    for entry in get_registry("quantizer").entries():
        cls = entry.obj
        assert isinstance(cls, type), "quantizers are registered as classes"
        assert cls.config_class.method == entry.name
        assert cls.config_class.__module__ == cls.__module__, "a method's config lives beside it"


def test_spec_and_file_of_a_method_registered_at_run_time(quant_plugin, fresh_lm, sample_ids, tmp_path):
    """A third-party method: its spec parses and a folder it wrote loads, found only through the registry."""
    from dataclasses import dataclass
    from typing import ClassVar

    import torch

    from crossedge.core import hookimpl, registered
    from crossedge.core.sources import load_model
    from crossedge.quant import Quantizer, Replacements, save_quantized
    from crossedge.quant.modules import Int8WeightLinear

    @dataclass(kw_only=True)
    class HalfConfig(QuantConfig):
        method: ClassVar[str] = "every-other"
        start: int = 0

    class EveryOtherQuantizer(Quantizer):
        name = "every-other"
        config_class = HalfConfig
        produces = (Int8WeightLinear,)

        def replace(self, model, config, targets, calibration):
            chosen = list(targets)[config.start :: 2]
            return Replacements(
                {
                    n: Int8WeightLinear.from_weight(
                        targets[n].weight, None, symmetric=True, per_tensor=False, act_dtype="float32"
                    )
                    for n in chosen
                },
                {"layers": len(chosen)},
            )

    class Plugin:
        @hookimpl
        def register_quantizers(self, register):
            register(EveryOtherQuantizer)

    model, tokenizer = fresh_lm
    with registered(Plugin(), name="every-other-test"):
        config = parse_spec("every-other:start=1")
        assert isinstance(config, HalfConfig) and config.start == 1
        from crossedge.quant import quantize

        result = quantize(model, config)
        assert result.details == {"layers": 7} and len(result.modules) == 7
        folder = save_quantized(model, tmp_path / "q", tokenizer)
        loaded = load_model(str(folder))
        with torch.no_grad():
            assert torch.equal(loaded.model(sample_ids).logits, model(sample_ids).logits)
    with pytest.raises(Exception, match="every-other"):
        load_model(str(folder))  # without the plugin the method is unknown: refused, never random weights
