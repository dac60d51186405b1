"""Every built-in method runs the conformance suite; tolerances reflect each method's precision."""

from crossedge.quant.testing import QuantizerConformance


class TestRTNInt8(QuantizerConformance):
    spec = "rtn"
    tolerance = 0.02


class TestRTNInt8Asymmetric(QuantizerConformance):
    spec = "rtn:symmetric=false,act_dtype=float32"
    tolerance = 0.02


class TestRTNInt4(QuantizerConformance):
    spec = "rtn:bits=4,group_size=32"
    tolerance = 0.1


class TestRTNFake(QuantizerConformance):
    spec = "rtn:bits=4,group_size=32,granularity=per_group,fake=true"
    tolerance = 0.1
    shrinks = False


class TestW8A8(QuantizerConformance):
    spec = "w8a8:matmul=int8pack-bf16"
    tolerance = 0.03


class TestW8A8PerTensor(QuantizerConformance):
    spec = "w8a8:act_granularity=per_tensor,weight_granularity=per_tensor,matmul=int8pack-bf16"
    tolerance = 0.05


class TestSmoothQuant(QuantizerConformance):
    spec = "smoothquant:alpha=0.5,matmul=int8pack-bf16"
    tolerance = 0.03


class TestCrossQuant(QuantizerConformance):
    spec = "crossquant:matmul=int8pack-bf16"
    tolerance = 0.03


class TestCrossQuantFake(QuantizerConformance):
    spec = "crossquant:fake=true"
    tolerance = 0.03
    shrinks = False


class TestGPTQ(QuantizerConformance):
    spec = "gptq:bits=4,group_size=32"
    tolerance = 0.08


class TestGPTQActOrder(QuantizerConformance):
    spec = "gptq:bits=4,group_size=32,act_order=true"
    tolerance = 0.08


class TestGPTQInt8(QuantizerConformance):
    spec = "gptq:bits=8"
    tolerance = 0.02


class TestMixed(QuantizerConformance):
    spec = "mixed:group_size=32,budget_fraction=0.2"
    tolerance = 0.1


class TestInt8Preset(QuantizerConformance):
    spec = "int8:repeats=2,keep_lm_head=true"  # the suite checks a kept head; test_presets the default
    tolerance = 0.03


class TestInt4Preset(QuantizerConformance):
    spec = "int4:group_size=32,repeats=2,keep_lm_head=true"
    tolerance = 0.1
