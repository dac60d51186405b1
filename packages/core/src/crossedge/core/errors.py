"""Exceptions raised by crossedge: every one carries a message a user can act on."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class CrossedgeError(Exception):
    """Base class of every error crossedge raises on purpose.

    The CLI prints the message as one red line and exits with code 1; ``--debug``
    shows the traceback instead.
    """


class CrossedgeWarning(UserWarning):
    """Base class of crossedge's warnings; the CLI prints them as one yellow line."""


class UnknownNameError(CrossedgeError, KeyError):
    """A name was looked up in a registry and nothing answers to it."""

    def __init__(self, kind: str, name: str, known: Iterable[str]):
        self.kind = kind
        self.name = name
        self.known = sorted(set(known))
        close = difflib.get_close_matches(name, self.known, n=3, cutoff=0.5)
        if close:
            hint = "did you mean " + " or ".join(repr(c) for c in close) + "?"
        elif self.known:
            hint = "known: " + ", ".join(self.known)
        else:
            hint = "none are registered; is the package that provides them installed?"
        super().__init__(f"unknown {kind} {name!r}: {hint}")

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return self.args[0]


class DuplicateNameError(CrossedgeError):
    """Two plugins tried to register the same name (or alias) for one kind."""


class PluginError(CrossedgeError):
    """A plugin is broken: it failed to import or to register."""


class ModelSourceError(CrossedgeError):
    """A model could not be fetched, converted, verified or loaded."""


class CacheCorruptedError(ModelSourceError):
    """A cache entry failed its integrity check."""


class ChecksumMismatchError(ModelSourceError):
    """A downloaded or assembled file does not have the expected SHA-256."""


class OfflineError(ModelSourceError):
    """A network fetch was needed and failed."""


class BenchmarkError(CrossedgeError):
    """A benchmark report is malformed or a benchmark could not run."""
