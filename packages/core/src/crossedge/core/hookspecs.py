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

Instead of the object a plugin may pass a ``"package.module:attr"`` reference with an
explicit name, ``register("pkg.mod:Cls", name="n", aliases=())``; it is imported on first
use, so listing names (``crossedge plugins``) imports nothing heavy.

What is registered depends on the kind, and only on the kind:

- **Parts built from a spec register classes**: drafters, draft-length policies,
  quantizers, backends, scorers, losses, domain algorithms, fusion blocks. ``name`` (and
  ``description``) are class attributes; the options of a spec (``name:key=value``,
  docs/specs.md) are the class's ``__init__`` keyword arguments (a quantizer's are the
  fields of its config dataclass), declared with type hints so that
  :func:`crossedge.core.specs.bind` can check and convert them.
- **Named resources register instances**: model sources, model formats, datasets and
  benchmarks, each configured when the plugin builds it (a reference ``"pkg.mod:make()"``
  registers what calling ``make`` returns).

The registry enforces this when an entry is first used (``crossedge.core.registry.CLASS_KINDS``
lists the class kinds): an instance of a class kind, or a class of an instance kind, is a
``PluginError`` naming the plugin, the name and what to register instead.
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
    """Register named datasets: text corpora and array datasets.

    Called the first time a dataset name is resolved. Call
    ``register(dataset, aliases=())`` for each instance of
    :class:`crossedge.core.datasets.Dataset` (documents of text) or of
    :class:`crossedge.core.contracts.array_dataset.ArrayDataset` (windows ``x`` of shape
    (N, T, C) with labels, domains and splits). Datasets are built at run time from files
    already on the machine or fetched by the user; plugins never ship other people's data.
    Returns nothing.
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


@hookspec
def register_unmasking_strategies(register):
    """Register unmasking strategies: which positions a masked diffusion LM decodes at each forward.

    Called the first time a strategy name is resolved. Call
    ``register(strategy_class, aliases=())`` for each subclass of
    :class:`crossedge.core.contracts.unmasking.UnmaskingStrategy`; ``strategy_class.name`` is the
    name used in strategy specs (``low-confidence:k=2``), its options the class's ``__init__``
    keyword arguments (:func:`crossedge.core.contracts.unmasking.build_unmasking`). Checked by
    :mod:`crossedge.core.conformance.unmasking`. Returns nothing.
    """


# -------------------------------------------------------------- quantization


@hookspec
def register_quantizers(register):
    """Register quantization methods.

    Called the first time a quantizer name is resolved. Call
    ``register(quantizer_class, aliases=())`` where ``quantizer_class.name`` is the
    method name (``rtn``, ``gptq``, ...): a subclass of
    :class:`crossedge.core.contracts.quantizer.Quantizer` whose ``config_class`` holds its
    options. This registry is the only one: specs and saved files find methods here.
    Returns nothing.
    """


# ----------------------------------------------------------------- backends


@hookspec
def register_backends(register):
    """Register accelerator backends that prepare a model for execution.

    Called the first time a backend name is resolved. Call
    ``register(backend_class, aliases=())`` with a subclass of
    :class:`crossedge.core.contracts.backend.Backend`; ``backend_class.name`` is used by
    ``--backend`` specs. A backend checks its own dependencies before use and says how to
    install what is missing. Returns nothing.
    """


# ---------------------------------------------------------- scorers and losses


@hookspec
def register_scorers(register):
    """Register relevance scorers (retrieval's bi-, cross- and uni-encoders, BM25).

    Called the first time a scorer name is resolved. Call
    ``register(scorer_class, aliases=())`` for each subclass of
    :class:`crossedge.core.contracts.scorer.Scorer`; ``scorer_class.name`` is its name.
    Register classes, not instances. Returns nothing.
    """


@hookspec
def register_losses(register):
    """Register ranking and distillation losses.

    Called the first time a loss name is resolved. Call
    ``register(loss_class, aliases=())`` for each subclass of
    :class:`crossedge.core.contracts.loss.Loss`; ``loss_class.name`` is the name used
    by ``--loss`` and ``--losses``. Register classes, not instances. Returns nothing.
    """


# --------------------------------------------------------- domain algorithms


@hookspec
def register_algorithms(register):
    """Register domain-generalization algorithms trained on array datasets.

    Called the first time an algorithm name is resolved. Call
    ``register(algorithm_class, aliases=())`` for each subclass of
    :class:`crossedge.core.contracts.algorithm.DomainAlgorithm`; ``algorithm_class.name``
    is the name used in sweeps and records. Register the class, not an instance: it is
    built per run with the input shape, the class and domain counts and the hyperparameters.
    Returns nothing.
    """


# ------------------------------------------------------------- fusion blocks


@hookspec
def register_fusion_blocks(register):
    """Register fusion blocks that combine two views (token sequences) into one representation.

    Called the first time a fusion block name is resolved. Call
    ``register(fusion_class, aliases=())`` for each subclass of
    :class:`crossedge.core.contracts.fusion.FusionBlock`; ``fusion_class.name`` is the name
    used in fusion specs (``cross-attention:heads=4``). Register the class, not an instance:
    it is built per use from a spec with the two input widths and the output width
    (:func:`crossedge.core.contracts.fusion.build_fusion`), its options being the class's
    ``__init__`` keyword arguments. Checked by :mod:`crossedge.core.conformance.fusion`.
    Returns nothing.
    """


# ------------------------------------------------------------ model formats


@hookspec
def register_model_formats(register):
    """Register loaders for model folders in a layout other than plain transformers.

    Called the first time a local model folder is loaded. Call ``register(fmt)`` for
    each :class:`crossedge.core.contracts.model_format.ModelFormat` *instance*;
    ``fmt.detect(folder)`` says whether it claims a folder and ``fmt.load(folder,
    name=..., source=..., task=..., **kwargs)`` returns a ``LoadedModel`` with the
    folder's real weights. At most one format may claim a folder. Returns nothing.
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
