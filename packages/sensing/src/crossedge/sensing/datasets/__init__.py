"""Sensing array datasets: one module per dataset (synthetic generators and loaders)."""
