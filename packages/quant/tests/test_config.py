import json

import pytest

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
def test_dict_and_json_round_trip(config):
    data = config.to_dict()
    assert data["method"] == config.method and data["version"] == CONFIG_VERSION
    again = config_from_dict(json.loads(json.dumps(data)))
    assert type(again) is type(config) and again == config
    assert QuantConfig.from_dict(data) == config


def test_unknown_version_is_refused_clearly():
    data = RTNConfig().to_dict()
    data["version"] = 99
    with pytest.raises(QuantConfigError, match="version 99 is not supported.*upgrade"):
        config_from_dict(data)
    with pytest.raises(QuantConfigError, match="no 'version' field"):
        config_from_dict({"method": "rtn"})


def test_unknown_field_and_method_are_refused():
    with pytest.raises(QuantConfigError, match="no field.*colour"):
        config_from_dict({**RTNConfig().to_dict(), "colour": "red"})
    with pytest.raises(QuantConfigError, match="known: .*rtn"):
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


def test_parse_spec():
    config = parse_spec("gptq:bits=4,group_size=64,act_order=true,skip=*.0.*|lm_head")
    assert isinstance(config, GPTQConfig)
    assert (config.bits, config.group_size, config.act_order) == (4, 64, True)
    assert config.skip == ["*.0.*", "lm_head"]
    assert parse_spec("mixed:bit_choices=4+8,budget_fraction=0.25").bit_choices == [4, 8]
    assert spec_label(parse_spec("smoothquant:alpha=0.8")) == "smoothquant:alpha=0.8"
    assert spec_label(parse_spec("rtn")) == "rtn"
    with pytest.raises(QuantConfigError, match="unknown quantization method"):
        parse_spec("nope:bits=4")
    with pytest.raises(QuantConfigError, match="KEY=VALUE"):
        parse_spec("rtn:bits")
