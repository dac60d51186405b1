"""The domain-algorithm contract: ``update(minibatches)``, ``predict(x)`` and declared, seeded hyperparameters.

After DomainBed's ``Algorithm``: an algorithm is built with the input shape (T, C), the number
of classes and of training domains, a hyperparameter dict and a seed; ``update`` takes one
``(x, y)`` minibatch per training domain and returns what it measured; ``predict`` returns
logits. Each hyperparameter is declared once with a default and a sampler, so a sweep draws
``random_hparams(seed)`` reproducibly and a mistyped name is refused with the valid ones.
Commands and the Python API name an algorithm by a spec, ``erm:lr=0.001,width=64``
(:func:`build_algorithm`): the ``HPARAMS`` table is its option list.

Register the class (not an instance) through ``register_algorithms``. torch is imported inside
functions so that registering an algorithm keeps ``crossedge --help`` free of torch.
"""

from __future__ import annotations

import contextlib
import json
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import CrossedgeError

if TYPE_CHECKING:
    import numpy as np
    import torch

    from ..specs import Spec

FORMAT = "crossedge.algorithm/1"


class AlgorithmError(CrossedgeError):
    """An algorithm was given bad hyperparameters, or a saved algorithm cannot be loaded."""


@dataclass(frozen=True)
class HParam:
    """One declared hyperparameter: its default and how a sweep samples it from a seeded generator."""

    default: bool | int | float | str
    sample: Callable[[np.random.Generator], Any]
    help: str = ""

    def coerce(self, name: str, value: Any, owner: str) -> bool | int | float | str:
        """``value`` as the default's type; anything else is an :class:`AlgorithmError` naming both."""
        if hasattr(value, "item") and not isinstance(value, (str, bytes)):
            value = value.item()  # numpy scalars from a sampler
        kind = type(self.default)
        if kind is bool:
            ok = isinstance(value, bool)
        elif kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        else:
            ok = isinstance(value, kind)
        if not ok:
            raise AlgorithmError(
                f"hyperparameter {name!r} of algorithm {owner!r} must be {kind.__name__}, got {value!r}"
            )
        return kind(value)


def _stream(seed: int, algorithm: str, hparam: str) -> np.random.Generator:
    """A generator per (seed, algorithm, hyperparameter): adding a hyperparameter leaves the others' draws."""
    import numpy as np

    return np.random.default_rng([int(seed), zlib.crc32(f"{algorithm}/{hparam}".encode())])


class DomainAlgorithm:
    """Base class of domain algorithms; subclasses set ``name``, ``description``, ``HPARAMS`` and two verbs.

    ``update(minibatches)`` trains one step on a list of ``(x, y)`` pairs, one per training
    domain, ``x`` float32 (B, T, C) and ``y`` int64 (B,), and returns a dict of floats that
    includes ``"loss"``. ``predict(x)`` returns logits (N, num_classes). Networks are
    ``torch.nn.Module`` attributes: :meth:`state_dict` saves all of them; an algorithm with
    other state (optimizer moments for resuming) extends :meth:`state_dict` and
    :meth:`load_state_dict`.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: hyperparameter name -> declaration; a subclass extends its parent's with ``{**Parent.HPARAMS, ...}``
    HPARAMS: ClassVar[Mapping[str, HParam]] = {}
    #: True when the algorithm implements :meth:`adapt` (few-shot or unsupervised target adaptation)
    adapts: ClassVar[bool] = False

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        num_domains: int,
        hparams: Mapping[str, Any] | None = None,
        seed: int = 0,
    ):
        self.input_shape = tuple(int(d) for d in input_shape)
        self.num_classes = int(num_classes)
        self.num_domains = int(num_domains)
        self.seed = int(seed)
        self.hparams = self.check_hparams(hparams or {})

    # ---------------------------------------------------------------- hyperparameters

    @classmethod
    def default_hparams(cls) -> dict[str, Any]:
        """Every declared hyperparameter at its default."""
        return {key: hp.coerce(key, hp.default, cls.name) for key, hp in cls.HPARAMS.items()}

    @classmethod
    def random_hparams(cls, seed: int) -> dict[str, Any]:
        """One draw from every hyperparameter's distribution; the same seed gives the same dict."""
        return {
            key: hp.coerce(key, hp.sample(_stream(seed, cls.name, key)), cls.name) for key, hp in cls.HPARAMS.items()
        }

    @classmethod
    def check_hparams(cls, hparams: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults overlaid with ``hparams``; an unknown name is refused with the valid ones listed."""
        unknown = sorted(set(hparams) - set(cls.HPARAMS))
        if unknown:
            import difflib

            hints = [
                f"{u!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(u, cls.HPARAMS, 1)) else repr(u)
                for u in unknown
            ]
            valid = ", ".join(cls.HPARAMS) or "none"
            raise AlgorithmError(f"algorithm {cls.name!r} has no hyperparameter {', '.join(hints)}; valid: {valid}")
        merged = cls.default_hparams()
        for key, value in hparams.items():
            merged[key] = cls.HPARAMS[key].coerce(key, value, cls.name)
        return merged

    # ---------------------------------------------------------------- the two verbs

    def update(self, minibatches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
        """Train one step on one ``(x, y)`` minibatch per training domain; return measurements (``loss``...)."""
        raise NotImplementedError

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (N, num_classes) for windows ``x`` of shape (N, T, C)."""
        raise NotImplementedError

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, unlabelled_x: torch.Tensor) -> dict[str, float]:
        """Adapt to the target domain after training: ``support_*`` are its few labelled windows
        (possibly none), ``unlabelled_x`` its other windows without labels. Only called when
        ``adapts`` is True; returns measurements. A runner calls it once, then ``predict``."""
        raise NotImplementedError(f"algorithm {self.name!r} does not adapt to a target domain")

    # ---------------------------------------------------------------- helpers for subclasses

    @contextlib.contextmanager
    def seeded(self, offset: int = 0) -> Iterator[None]:
        """Run a block (building networks) under torch's RNG seeded from ``seed``, restoring it afterwards."""
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed * 1_000_003 + offset)
            yield

    def networks(self) -> dict[str, torch.nn.Module]:
        """The ``torch.nn.Module`` attributes, by attribute name (what :meth:`state_dict` saves)."""
        import torch

        return {key: value for key, value in sorted(vars(self).items()) if isinstance(value, torch.nn.Module)}

    # ---------------------------------------------------------------- state

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every network's parameters and buffers as ``ATTR.KEY`` -> tensor (copied, on the CPU)."""
        return {
            f"{attr}.{key}": tensor.detach().to("cpu").clone().contiguous()
            for attr, module in self.networks().items()
            for key, tensor in module.state_dict().items()
        }

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load what :meth:`state_dict` produced; missing or unexpected tensors are an error naming them."""
        expected = set(self.state_dict())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise AlgorithmError(
                f"state for algorithm {self.name!r} does not match it: missing {missing[:5] or 'none'}, "
                f"unexpected {unexpected[:5] or 'none'}"
            )
        for attr, module in self.networks().items():
            prefix = f"{attr}."
            own = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            for key, current in module.state_dict().items():
                if own[key].shape != current.shape:
                    raise AlgorithmError(
                        f"tensor {prefix}{key} has shape {tuple(own[key].shape)}, "
                        f"algorithm {self.name!r} expects {tuple(current.shape)}"
                    )
            module.load_state_dict(own)

    def save(self, path: str | Path) -> Path:
        """Write the state and everything needed to rebuild the algorithm to one safetensors file, atomically."""
        from safetensors.torch import save

        from ..cache import atomic_file

        metadata = {
            "format": FORMAT,
            "algorithm": self.name,
            "config": json.dumps(
                {
                    "input_shape": list(self.input_shape),
                    "num_classes": self.num_classes,
                    "num_domains": self.num_domains,
                    "hparams": self.hparams,
                    "seed": self.seed,
                },
                sort_keys=True,
            ),
        }
        state = self.state_dict()
        metadata["sha256"] = state_sha256(state)
        path = Path(path)
        with atomic_file(path) as handle:
            handle.write(save(state, metadata=metadata))
        return path


def state_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """One SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
    import hashlib

    import torch

    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().to("cpu").contiguous()
        digest.update(f"{key}|{tensor.dtype}|{list(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load_algorithm(path: str | Path, algorithm_class: type[DomainAlgorithm] | None = None) -> DomainAlgorithm:
    """Rebuild an algorithm saved by :meth:`DomainAlgorithm.save`; the class is looked up by name unless given."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            state = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not a dict)
        config = json.loads(metadata["config"])
        if metadata.get("format") != FORMAT:
            raise ValueError(f"format {metadata.get('format')!r}")
    except FileNotFoundError as exc:
        raise AlgorithmError(f"no saved algorithm at {path}") from exc
    except Exception as exc:  # safetensors raises its own types; a truncated header raises others
        raise AlgorithmError(
            f"{path} is not a saved crossedge algorithm ({type(exc).__name__}: {exc}); save it again"
        ) from exc
    if metadata.get("sha256") != state_sha256(state):
        raise AlgorithmError(f"{path} does not match its recorded SHA-256: the file is damaged; save it again")
    if algorithm_class is None:
        from ..registry import get_registry

        algorithm_class = get_registry("algorithm").get(metadata["algorithm"])
    elif algorithm_class.name != metadata["algorithm"]:
        raise AlgorithmError(f"{path} holds algorithm {metadata['algorithm']!r}, not {algorithm_class.name!r}")
    algorithm = algorithm_class(
        config["input_shape"], config["num_classes"], config["num_domains"], config["hparams"], seed=config["seed"]
    )
    algorithm.load_state_dict(state)
    return algorithm


def get_algorithm(name: str) -> type[DomainAlgorithm]:
    """The registered algorithm class for a name or alias."""
    from ..registry import get_registry

    return get_registry("algorithm").get(name)


def hparam_signature(algorithm_class: type[DomainAlgorithm]) -> Callable[..., dict[str, Any]]:
    """A callable whose keyword parameters are the declared hyperparameters (typed by their defaults).

    It lets :func:`crossedge.core.specs.bind` treat the ``HPARAMS`` table as an algorithm's
    option list, so a spec's values get the one coercion and the one unknown-key error.
    """
    import inspect

    def hparams(**values: Any) -> dict[str, Any]:
        return values

    params = [
        inspect.Parameter(key, inspect.Parameter.KEYWORD_ONLY, default=hp.default, annotation=type(hp.default))
        for key, hp in algorithm_class.HPARAMS.items()
    ]
    hparams.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    hparams.__annotations__ = {p.name: p.annotation for p in params}
    return hparams


def parse_algorithm_spec(spec: str | Spec) -> tuple[type[DomainAlgorithm], dict[str, Any]]:
    """The registered class an ``name:hparam=value,...`` spec names and its hyperparameters over the defaults.

    Unknown names and hyperparameters are :class:`crossedge.core.specs.SpecError` pointing at the
    character, listing the valid ones; values are coerced to the declared types.
    """
    from ..errors import UnknownNameError
    from ..specs import bind, parse_spec

    parsed = parse_spec(spec, kind="algorithm")
    try:
        algorithm_class = get_algorithm(parsed.name)
    except UnknownNameError as exc:
        raise parsed.error(str(exc)) from None
    given = bind(parsed, hparam_signature(algorithm_class), kind="algorithm")
    try:
        return algorithm_class, algorithm_class.check_hparams(given)
    except AlgorithmError as exc:  # a value the declared type accepts but the table refuses
        raise parsed.error(str(exc)) from None


def build_algorithm(
    spec: str | Spec,
    *,
    input_shape: Sequence[int],
    num_classes: int,
    num_domains: int,
    seed: int = 0,
) -> DomainAlgorithm:
    """The algorithm a spec names (``erm:lr=0.001,width=64``), built for the given shapes and seed."""
    algorithm_class, hparams = parse_algorithm_spec(spec)
    return algorithm_class(input_shape, num_classes, num_domains, hparams, seed=seed)
