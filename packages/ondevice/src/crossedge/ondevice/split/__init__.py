"""Slimmable split encoders: a CNN split between device and server whose bytes on the wire adapt to the link.

The device runs a slimmable encoder (width chosen per inference) ending in a quantized
bottleneck; the server decodes the bit-packed bytes to class logits. A deadline controller
picks, per inference, the most accurate width and bit depth whose measured device latency,
transmit time and server latency fit the deadline on the current link.
"""

from __future__ import annotations

from crossedge.core.lazy import lazy_exports

#: public name -> the submodule that defines it
_EXPORTS: dict[str, str] = {
    "HEADER_BYTES": ".bottleneck",
    "Payload": ".bottleneck",
    "pack_codes": ".bottleneck",
    "payload_size": ".bottleneck",
    "quantize": ".bottleneck",
    "unpack_codes": ".bottleneck",
    "ImageTask": ".data",
    "load_task": ".data",
    "SettingCost": ".evaluation",
    "measure_costs": ".evaluation",
    "load_trained": ".experiment",
    "train_on": ".experiment",
    "AdaptivePolicy": ".link",
    "BandwidthTrace": ".link",
    "Choice": ".link",
    "DeadlineController": ".link",
    "FixedPolicy": ".link",
    "SimulationResult": ".link",
    "simulate": ".link",
    "Setting": ".model",
    "SplitConfig": ".model",
    "SplitNetwork": ".model",
    "load_network": ".model",
    "save_network": ".model",
    "TrainConfig": ".training",
    "TrainResult": ".training",
    "train": ".training",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
