"""Sensing domain algorithms: one module per method, all on :class:`base.SensingAlgorithm`."""
