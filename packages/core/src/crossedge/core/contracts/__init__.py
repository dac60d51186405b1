"""The contracts every plugin kind implements: one module per kind, each a small base class.

A third-party plugin depends on crossedge-core alone: it subclasses the contract of its
kind from here and proves itself with the matching suite in :mod:`crossedge.core.conformance`.
"""
