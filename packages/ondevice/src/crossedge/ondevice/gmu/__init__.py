"""Gated memory sharing (SambaY-style decoder-hybrid-decoder) against a plain decoder at equal parameters.

Both are byte-level decoders trained here. The hybrid's self-decoder (recurrence, sliding-window attention,
one full-attention layer) builds the only KV cache that grows; its cross-decoder alternates cross-attention over
that shared cache with gated memory units that gate the last recurrent layer's memory by the layer's input.
"""

from __future__ import annotations

from crossedge.core.lazy import lazy_exports

#: public name -> the submodule that defines it
_EXPORTS: dict[str, str] = {
    "DecodeCache": ".cache",
    "KVState": ".cache",
    "RecurrentState": ".cache",
    "WindowState": ".cache",
    "ByteCorpus": ".data",
    "load_corpus": ".data",
    "DecodeCost": ".decoding",
    "decode_costs": ".decoding",
    "generate": ".decoding",
    "latency_rows": ".experiment",
    "quality_rows": ".experiment",
    "train_variant": ".experiment",
    "CrossAttention": ".layers",
    "GatedMemoryUnit": ".layers",
    "GatedRecurrence": ".layers",
    "SlidingWindowAttention": ".layers",
    "linear_scan": ".layers",
    "ByteDecoder": ".model",
    "DecoderConfig": ".model",
    "load_decoder": ".model",
    "matched_pair": ".model",
    "parameter_count": ".model",
    "save_decoder": ".model",
    "TrainConfig": ".training",
    "TrainResult": ".training",
    "bits_per_byte": ".training",
    "train_decoder": ".training",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
