"""Integration tests: what a test times stays with the test."""

import pytest


@pytest.fixture(autouse=True)
def _measurements(tmp_path, monkeypatch):
    """Kernel choices and verification costs a test times are its own (never the user's cache)."""
    monkeypatch.setenv("CROSSEDGE_MEASUREMENTS", str(tmp_path / "measurements"))
