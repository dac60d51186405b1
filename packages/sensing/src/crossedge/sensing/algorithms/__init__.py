"""Sensing domain algorithms: one module per method, all on crossedge.core.networks.FeaturizerClassifier."""
