"""The example quantizer passes core's quantizer conformance suite by declaring one class."""

import crossedge_example_quantizer

from crossedge.core.conformance.quantizer import QuantizerConformance


class TestAbsmax8(QuantizerConformance):
    plugin = crossedge_example_quantizer
    spec = "absmax8"
    tolerance = 0.05


class TestAbsmax8PerTensor(QuantizerConformance):
    plugin = crossedge_example_quantizer
    spec = "absmax8:per_row=false"
    tolerance = 0.1
