"""Parts that compose on the command line: checked before any model loads, applied after it loads.

``--quant SPEC`` on any command that loads a causal LM goes through here, so core and
every package quantize the same way through the one quantizer registry, without importing
the package that provides the method::

    plan = check_quant("rtn:bits=4", model="smollm2-135m")   # spec, method, model checked; nothing loaded
    loaded = load_model("smollm2-135m")
    result = apply_quant(loaded, plan)                       # loaded.model is now quantized in place

Commands that also take ``--backend`` check and build the whole (model, quant, backend)
stack with one pair of calls, so every command composes the parts the same way::

    stack = check_stack("smollm2-135m", quant="rtn", backend="torch-onednn", purpose="specdec generate")
    built = build_stack(stack)                               # load -> quantize -> backend.prepare_causal_lm
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .contracts.backend import DEFAULT_BACKEND, Backend
from .contracts.model_format import KNOWN_MARKERS
from .contracts.quantizer import Quantizer, QuantizerConfig, QuantizeResult, parse_config_spec, quantizer_class
from .errors import CrossedgeError

#: Calibration windows cut from calibration text when a method needs statistics.
CALIBRATION_SEQ_LEN = 512
CALIBRATION_BATCHES = 8


@dataclass(frozen=True)
class QuantPlan:
    """A ``--quant`` spec checked against the registry: the method's class and its config."""

    spec: str
    quantizer: type[Quantizer]
    config: QuantizerConfig

    @property
    def needs_calibration(self) -> bool:
        """Whether the method reads calibration data."""
        return bool(self.quantizer.needs_calibration)


def _quantized_folder(model: str | None) -> Path | None:
    """The folder of ``model`` when it is a local folder that is already quantized."""
    if not model:
        return None
    folder = Path(model).expanduser()
    try:
        from .sources import resolve_model

        path = resolve_model(model).path()
    except CrossedgeError:
        path = folder if folder.is_dir() else None
    if path is not None and any((Path(path) / marker).is_file() for marker in KNOWN_MARKERS):
        return Path(path)
    return None


def check_quant(
    spec: str | QuantPlan | None, *, model: str | None = None, calibration: bool = False
) -> QuantPlan | None:
    """Parse and check a ``--quant`` spec before anything loads (``None`` passes through).

    Refuses an unknown method or option (the spec error names the character), a method that
    needs calibration data when the command has none (``calibration=False``), and a ``model``
    that is a folder already quantized.
    """
    if spec is None or isinstance(spec, QuantPlan):
        return spec
    config = parse_config_spec(spec)
    plan = QuantPlan(spec, quantizer_class(config.method), config)
    if plan.needs_calibration and not calibration:
        raise CrossedgeError(
            f"--quant {spec!r}: method {config.method!r} needs calibration data, which this command does not take; "
            f"quantize once with 'crossedge quant run --model MODEL --method {spec} --out DIR' and pass --model DIR"
        )
    already = _quantized_folder(model)
    if already is not None:
        raise CrossedgeError(
            f"--quant {spec!r}: model {model!r} is already quantized ({already}); load a float model to quantize it"
        )
    return plan


def calibration_batches(
    tokenizer: Any, text: str, *, seq_len: int = CALIBRATION_SEQ_LEN, num_batches: int = CALIBRATION_BATCHES
) -> list[Any]:
    """Consecutive ``[1, seq_len]`` input_ids windows cut from ``text`` (at least one)."""
    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    if len(ids) < 2:
        raise CrossedgeError("calibration text is empty after tokenization: give more text")
    seq_len = min(seq_len, len(ids))
    windows = [ids[i : i + seq_len] for i in range(0, len(ids) - seq_len + 1, seq_len)][:num_batches]
    return [w.unsqueeze(0) for w in windows]


def apply_quant(loaded: Any, quant: str | QuantPlan, *, calibration_text: str | None = None) -> QuantizeResult:
    """Quantize ``loaded.model`` in place through the registered method and return what it did."""
    plan = check_quant(quant, calibration=calibration_text is not None)
    assert plan is not None
    calibration = None
    if plan.needs_calibration:
        if calibration_text is None:
            raise CrossedgeError(f"method {plan.config.method!r} needs calibration text")
        calibration = calibration_batches(loaded.tokenizer, calibration_text)
    return plan.quantizer().quantize(loaded.model, plan.config, calibration=calibration)


@dataclass(frozen=True)
class StackPlan:
    """A target model, its ``--quant`` plan and its backend, checked together before anything loads."""

    model: str
    quant: QuantPlan | None
    backend: Backend
    #: The folder when ``model`` is a folder that is already quantized (it loads with custom kernels).
    quantized_folder: Path | None = None

    @property
    def quant_spec(self) -> str | None:
        """The ``--quant`` spec as given, or None for a target that is not quantized after loading."""
        return self.quant.spec if self.quant is not None else None

    def describe(self) -> dict[str, Any]:
        """What JSON outputs and reports record beside their results."""
        return {
            "model": self.model,
            "quant": self.quant_spec,
            "quantized_folder": str(self.quantized_folder) if self.quantized_folder is not None else None,
            "backend": self.backend.name,
        }


@dataclass
class BuiltStack:
    """A loaded target after quantization and backend preparation, with what the quantizer did."""

    plan: StackPlan
    loaded: Any
    quantized: QuantizeResult | None = None

    @property
    def model(self) -> Any:
        """The prepared target model."""
        return self.loaded.model

    @property
    def tokenizer(self) -> Any:
        """The target's tokenizer."""
        return self.loaded.tokenizer


def check_stack(
    model: str,
    *,
    quant: str | QuantPlan | None = None,
    backend: str | Backend = DEFAULT_BACKEND,
    purpose: str,
    calibration: bool = False,
    **capabilities: Any,
) -> StackPlan:
    """Check a (model, quant, backend) stack before any model loads; refuse what cannot compose.

    The quant spec is parsed and its method looked up (:func:`check_quant`), the backend spec
    built and asked for ``capabilities`` plus custom kernels whenever the target will be
    quantized (a ``--quant`` spec, or a ``model`` folder that is already quantized). Nothing
    here resolves or loads the model itself.
    """
    from .backends import resolve_backend

    plan = check_quant(quant, model=model, calibration=calibration)
    folder = _quantized_folder(model)
    needs_kernels = plan is not None or folder is not None
    if isinstance(backend, Backend):
        backend.require(purpose=purpose, custom_kernels=needs_kernels, **capabilities)
        runner = backend
    else:
        runner = resolve_backend(backend, purpose=purpose, custom_kernels=needs_kernels, **capabilities)
    return StackPlan(model, plan, runner, folder)


def build_stack(
    stack: StackPlan, *, task: str = "causal-lm", calibration_text: str | None = None, **load_kwargs: Any
) -> BuiltStack:
    """Load the checked stack: load the model, quantize it (if asked), then let the backend prepare it."""
    from .sources import resolve_model

    source = resolve_model(stack.model)
    if source.task != task:
        raise CrossedgeError(f"{stack.model!r} is a {source.task} model; this command needs a {task}")
    loaded = source.load(**load_kwargs)
    result = None
    if stack.quant is not None:
        result = apply_quant(loaded, stack.quant, calibration_text=calibration_text)
    if task == "causal-lm":
        loaded.model = stack.backend.prepare_causal_lm(loaded.model)
    return BuiltStack(stack, loaded, result)
