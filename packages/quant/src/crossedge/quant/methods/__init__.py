"""Built-in quantization methods, each a :class:`crossedge.quant.Quantizer` registered by the plugin module."""
