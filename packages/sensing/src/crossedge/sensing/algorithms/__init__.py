"""Sensing domain algorithms: one module per method, all on core's :class:`crossedge.core.networks.FeaturizerClassifier`."""
