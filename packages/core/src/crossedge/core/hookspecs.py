"""The hooks a crossedge plugin can implement.

Every hook here is a specification: the body does nothing, the docstring says
when crossedge calls it, what it passes and what it expects back. Implement one
by decorating a function of the same name with :data:`crossedge.core.hookimpl`.
An implementation may accept fewer arguments than the specification lists, so
new keyword arguments can be added in later releases without breaking plugins.

Registration hooks receive a ``register`` callback rather than returning lists:
``register(obj, aliases=())`` where ``obj.name`` is the primary name. crossedge
collects names and aliases per kind and rejects a name registered twice with an
error that names both plugins.

What is registered depends on the kind, and only on the kind:

- **Parts built from a spec register classes**: drafters, draft-length policies,
  quantizers, backends, scorers, losses, domain algorithms. ``name`` (and
  ``description``) are class attributes; the options of a spec (``name:key=value``,
  docs/specs.md) are the class's ``__init__`` keyword arguments (a quantizer's are the
  fields of its config dataclass), declared with type hints so that
  :func:`crossedge.core.specs.bind` can check and convert them.
- **Named resources register instances**: model sources, datasets and benchmarks, each
  configured when the plugin builds it.
"""

from __future__ import annotations

from pluggy import HookimplMarker, HookspecMarker

PROJECT_NAME = "crossedge"

hookspec = HookspecMarker(PROJECT_NAME)
hookimpl = HookimplMarker(PROJECT_NAME)


# ---------------------------------------------------------------- command line


@hookspec
def register_commands(cli):
    """Add subcommands to the ``crossedge`` command line.

    Called once when the CLI is built. ``cli`` is the top-level ``click.Group``;
    call ``cli.add_command(...)`` or decorate functions with ``@cli.command()``
    or ``@cli.group()``. Returns nothing.
    """


# --------------------------------------------------------------------- models


@hookspec
def register_model_sources(register):
    """Register named model sources.

    Called the first time a model name is resolved. Call
    ``register(source, aliases=())`` for each :class:`crossedge.core.ModelSource`
    instance; ``source.name`` is the name users type (``crossedge models pull NAME``).
    Returns nothing.
    """


@hookspec
def register_datasets(register):
    """Register named datasets and text corpora.

    Called the first time a dataset name is resolved. Call
    ``register(dataset, aliases=())`` for each :class:`crossedge.core.Dataset`
    instance. Datasets are built at run time from files already on the machine or
    fetched by the user; plugins never ship other people's text. Returns nothing.
    """


# ----------------------------------------------------------------- decoding


@hookspec
def register_drafters(register):
    """Register speculative-decoding drafters.

    Called the first time a drafter name is resolved. Call
    ``register(drafter_class, aliases=())`` where ``drafter_class.name`` is the
    name used in ``--drafter`` specs and its options are the class's ``__init__``
    keyword arguments. The contract is :class:`crossedge.core.contracts.drafter.Drafter`,
    checked by :mod:`crossedge.core.conformance.drafter`. Returns nothing.
    """


@hookspec
def register_draft_policies(register):
    """Register draft-length policies for speculative decoding.

    Called the first time a policy name is resolved. Call
    ``register(policy_class, aliases=())`` where ``policy_class.name`` is the name
    used in ``--policy`` and after ``@`` in ``--drafter`` specs; its options are the
    class's ``__init__`` keyword arguments. The contract is
    :class:`crossedge.core.contracts.policy.DraftLengthPolicy`. Returns nothing.
    """


# -------------------------------------------------------------- quantization


@hookspec
def register_quantizers(register):
    """Register quantization methods.

    Called the first time a quantizer name is resolved. Call
    ``register(quantizer, aliases=())`` where ``quantizer.name`` is the method
    name (``rtn``, ``gptq``, ...). The quantizer contract is defined by the
    ``crossedge-quant`` package. Returns nothing.
    """


# ----------------------------------------------------------------- backends


@hookspec
def register_backends(register):
    """Register accelerator backends that prepare a model for execution.

    Called the first time a backend name is resolved. Call
    ``register(backend, aliases=())`` where ``backend.name`` is used by
    ``--backend``. A backend checks its own dependencies before use and says how to
    install what is missing. Returns nothing.
    """


# ------------------------------------------------------------- domain models


@hookspec
def register_domain_models(register):
    """Register trainable domain components: scorers, losses, fusion blocks, algorithms.

    Called the first time a domain model name is resolved. Call
    ``register(component, aliases=())``; ``component.name`` is its name and
    ``component.category`` says what it is (``"scorer"``, ``"loss"``, ``"fusion"``,
    ``"algorithm"``). Names are unique across categories. Returns nothing.
    """


# --------------------------------------------------------------- benchmarks


@hookspec
def register_benchmarks(register):
    """Register benchmarks run by ``crossedge bench run`` and ``nox -s bench``.

    Called the first time a benchmark name is resolved. Call
    ``register(benchmark, aliases=())`` where ``benchmark.name`` is its name and
    ``benchmark.run(**options)`` returns a :class:`crossedge.core.bench.BenchmarkReport`.
    Returns nothing.
    """
