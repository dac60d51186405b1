"""Built-in backend: ``torch-eager``, so ``--backend`` has its default with no backend package installed."""

from __future__ import annotations

from crossedge.core.hookspecs import hookimpl


@hookimpl
def register_backends(register):
    """Register :class:`crossedge.core.backends.TorchEagerBackend` as ``torch-eager`` (alias ``eager``)."""
    from crossedge.core.backends import TorchEagerBackend

    register(TorchEagerBackend, aliases=("eager",))
