"""Moved to crossedge-core: :mod:`crossedge.core.conformance.backend` (this name keeps old imports working)."""

from crossedge.core.conformance.backend import BackendConformance, assert_missing_dependency_error

__all__ = ["BackendConformance", "assert_missing_dependency_error"]
