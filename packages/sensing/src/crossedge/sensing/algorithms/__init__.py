"""Sensing domain algorithms: one module per method, each on core's ``FeaturizerClassifier`` (most on its ``ERM``)."""
